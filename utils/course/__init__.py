"""The course's own tooling, not course content: notebook helpers, the assignment (its exercises,
their checks, the reading of submitted notebooks), the instant checks of the notebooks' practice
cells, what a Colab notebook rebuilds when an earlier one's results are missing, and the
`make demo` job."""
