"""The steps the DAGs and the local loop run, one module per pipeline."""
