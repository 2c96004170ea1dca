"""Entry point of the API: ``uvicorn app:app --app-dir serving`` (the logic is in the package).

Configuration comes from the environment (``MODEL_URI`` or ``MODEL_DIR``, ``RELOAD_TOKEN``,
``HP_SERVE_TOKENS_FILE`` or ``HP_SERVE_AUTH=off``, ``MLFLOW_TRACKING_URI``, ``HP_SERVE_*``); see
``docs/serving.md``. Without API clients (and without ``HP_SERVE_AUTH=off``) it refuses to
start: exit code 3, uvicorn's own for a failed start-up, and the reason on stderr.
"""

import sys

from healthpredict.serving.api import create_app
from healthpredict.serving.auth import AuthConfigError

try:
    app = create_app()
except AuthConfigError as exc:
    print(f"healthpredict API not started: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(3) from None
