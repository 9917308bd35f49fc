"""Read-only views of a run: the live terminal view (`autoswarm run`)."""
