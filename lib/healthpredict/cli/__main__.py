"""``python -m healthpredict.cli``: the same commands as ``healthpredict``."""

from healthpredict.cli import app

app()
