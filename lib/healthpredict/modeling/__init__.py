"""Features, model families, search, evaluation and the compiled inference runtime."""
