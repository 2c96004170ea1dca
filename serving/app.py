"""Entry point of the API: ``uvicorn app:app --app-dir serving`` (the logic is in the package).

Configuration comes from the environment (``MODEL_URI`` or ``MODEL_DIR``, ``RELOAD_TOKEN``,
``MLFLOW_TRACKING_URI``, ``HP_SERVE_*``); see ``docs/serving.md``.
"""

from healthpredict.serving.api import create_app

app = create_app()
