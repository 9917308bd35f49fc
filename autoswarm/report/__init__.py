"""Read-only views of a run: the live terminal view, plots and reports."""
