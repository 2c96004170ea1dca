"""MLflow: tracking, the model registry, the recorded train/retrain/monitor runs, deployment."""
