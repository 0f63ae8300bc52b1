"""The course's own tooling, not course content: notebook helpers, the assignment's grading, the
instant checks of the notebooks' practice cells, and the `make demo` job."""
