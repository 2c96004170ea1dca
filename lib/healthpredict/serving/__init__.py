"""Online scoring of HealthPredict models: FastAPI app, model loading, validation, metrics.

``healthpredict.serving.api.create_app`` builds the app; ``serving/app.py`` at the top of the
checkout is the thin entry point uvicorn runs. Scoring itself lives in
:mod:`healthpredict.modeling.runtime`; the API imports only ``core``, ``data``,
``modeling.features`` and that runtime.
"""
