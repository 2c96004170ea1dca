"""The inference runtime: a fitted HealthPredict pipeline compiled to plain numpy.

``predictor.compile_pipeline`` is the entry point; ``encoder`` compiles the preprocessing,
``scorers`` the estimator families, ``records`` converts between records and frames and builds
the self-check's probe records, ``model_meta`` reads a registered version's metadata. The
serving API uses only this package (and ``core``, ``data``, ``modeling.features``).
"""
