"""Health Predict: readmission risk for diabetic patients, as a notebook-driven pipeline."""

__version__ = "0.1.0"
