"""The course's own tooling, not course content: notebook helpers, the assignment's grading, and
the `make demo` job."""
