"""Pure functions over ledger rows: the noise model and factorial effects."""
