"""Drift statistics, references, reports and the monitoring loop's state."""
