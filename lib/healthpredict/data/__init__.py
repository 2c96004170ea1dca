"""Data: the raw UCI schema, loading, splitting, synthetic data and drift scenarios."""
