"""Pure functions over ledger rows: noise, effects, Pareto fronts."""
