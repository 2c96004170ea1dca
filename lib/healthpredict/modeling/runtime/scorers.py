"""Per-family scorers: a fitted estimator's positive-class probability from numpy arrays.

Random forests and gradient boosting walk all trees at once for small batches (few large numpy
calls) and use sklearn's compiled per-tree code above :data:`SMALL_BATCH`; logistic regression
is one dot product. A calibrated estimator (``CalibratedClassifierCV`` over one frozen estimator,
see :mod:`healthpredict.modeling.risk_calibration`) is its compiled estimator's response (the decision
function, or the probability of a forest) put through the same Platt or isotonic map.
:class:`EstimatorScorer` calls any other estimator's own ``predict_proba``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from healthpredict.modeling.runtime.encoder import UnsupportedModelError

# Up to this many rows, all trees are walked at once with vectorised numpy (few large calls);
# above it, sklearn's compiled per-tree code is cheaper per row.
SMALL_BATCH = 16


class _Forest:
    """All trees of an ensemble in flat arrays, walked in lock step for small batches."""

    def __init__(self, trees: list[dict[str, np.ndarray]]) -> None:
        sizes = [len(t["feature"]) for t in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        children = []
        for t, off in zip(trees, offsets, strict=True):
            own = np.arange(len(t["feature"]), dtype=np.intp)
            leaf = t["leaf"]
            # A leaf points at itself, so extra steps of the walk leave it where it is.
            children.append(
                np.stack([np.where(leaf, own, t["left"]), np.where(leaf, own, t["right"])], 1) + off
            )
        self.children = np.concatenate(children).reshape(-1)
        self.feature = np.concatenate([np.where(t["leaf"], 0, t["feature"]) for t in trees]).astype(
            np.intp
        )
        self.threshold = np.concatenate([t["threshold"] for t in trees]).astype(np.float64)
        self.missing_left = np.concatenate([t["missing_left"] for t in trees]).astype(bool)
        self.value = np.concatenate([t["value"] for t in trees]).astype(np.float64)
        self.offsets = offsets
        self.roots = offsets.copy()
        self.depth = max(int(t["depth"]) for t in trees)

    def leaf_values(self, X: np.ndarray) -> np.ndarray:
        """Leaf value of every (row, tree): shape (n_rows, n_trees)."""
        n, n_features = X.shape
        flat = X.reshape(-1)
        base = (np.arange(n, dtype=np.intp) * n_features)[:, None]
        idx = np.broadcast_to(self.roots, (n, len(self.roots)))
        for _ in range(self.depth):
            x = flat[base + self.feature[idx]]
            go_right = ~((x <= self.threshold[idx]) | (np.isnan(x) & self.missing_left[idx]))
            idx = self.children[2 * idx + go_right]
        return self.value[idx]


class _RandomForestScorer:
    name = "random_forest"

    def __init__(self, est: RandomForestClassifier) -> None:
        if est.n_outputs_ != 1 or len(est.classes_) != 2:
            raise UnsupportedModelError("random forest that is not binary single-output")
        trees = []
        self.leaf_proba = []
        for tree in (e.tree_ for e in est.estimators_):
            value = tree.value[:, 0, :]
            # DecisionTreeClassifier.predict_proba: divide by the row sum (0 -> 1).
            norm = value.sum(axis=1)
            norm[norm == 0.0] = 1.0
            proba = value[:, 1] / norm
            self.leaf_proba.append(proba)
            trees.append(
                {
                    "feature": tree.feature,
                    "threshold": tree.threshold,
                    "left": tree.children_left,
                    "right": tree.children_right,
                    "leaf": tree.children_left < 0,
                    "missing_left": getattr(tree, "missing_go_to_left", np.zeros(tree.node_count)),
                    "value": proba,
                    "depth": tree.max_depth,
                }
            )
        self.forest = _Forest(trees)
        self.trees = [e.tree_ for e in est.estimators_]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        # The forest compares float32 features (it casts its input) with float64 thresholds.
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        if len(X) <= SMALL_BATCH:
            return self.forest.leaf_values(X32.astype(np.float64)).sum(axis=1) / len(self.trees)
        total = np.zeros(len(X), dtype=np.float64)
        for tree, proba in zip(self.trees, self.leaf_proba, strict=True):
            total += proba[tree.apply(X32)]  # compiled traversal, no per-tree validation
        return total / len(self.trees)

    # What calibration maps: a forest has no decision function, its probability is the response.
    response = __call__


class _HistGradientBoostingScorer:
    name = "hist_gradient_boosting"

    def __init__(self, est: HistGradientBoostingClassifier) -> None:
        if len(est.classes_) != 2 or est.n_trees_per_iteration_ != 1:
            raise UnsupportedModelError("gradient boosting that is not binary")
        if getattr(est, "is_categorical_", None) is not None and np.any(est.is_categorical_):
            raise UnsupportedModelError("gradient boosting with categorical splits")
        trees = []
        for (predictor,) in est._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise UnsupportedModelError("gradient boosting with categorical splits")
            leaf = nodes["is_leaf"].astype(bool)
            trees.append(
                {
                    "feature": nodes["feature_idx"],
                    "threshold": nodes["num_threshold"],
                    "left": nodes["left"].astype(np.intp),
                    "right": nodes["right"].astype(np.intp),
                    "leaf": leaf,
                    "missing_left": nodes["missing_go_to_left"],
                    "value": np.where(leaf, nodes["value"], 0.0),
                    "depth": nodes["depth"].max(),
                }
            )
        self.forest = _Forest(trees)
        self.baseline = float(np.ravel(est._baseline_prediction)[0])
        self.est = est

    def response(self, X: np.ndarray) -> np.ndarray:
        """The decision function (log-odds) of each row."""
        if len(X) <= SMALL_BATCH:
            return self.baseline + self.forest.leaf_values(X).sum(axis=1)
        # One thread: OpenMP start-up per boosting iteration costs more than it saves for a
        # request-sized batch, and it fights the other workers for the same cores.
        return self.est._raw_predict(X, n_threads=1)[:, 0]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return expit(self.response(X))


class _LogisticScorer:
    name = "logistic_regression"

    def __init__(self, est: LogisticRegression) -> None:
        if est.coef_.shape[0] != 1 or len(est.classes_) != 2:
            raise UnsupportedModelError("logistic regression that is not binary")
        self.coef = np.ascontiguousarray(est.coef_[0], dtype=np.float64)
        self.intercept = float(est.intercept_[0])

    def response(self, X: np.ndarray) -> np.ndarray:
        """The decision function (log-odds) of each row."""
        return X @ self.coef + self.intercept

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return expit(self.response(X))


class _CalibratedScorer:
    """A compiled estimator's response through the fitted Platt or isotonic map."""

    def __init__(self, est: CalibratedClassifierCV) -> None:
        if len(est.classes_) != 2 or len(est.calibrated_classifiers_) != 1:
            raise UnsupportedModelError("calibration that is not one binary map")
        (calibrated,) = est.calibrated_classifiers_
        inner = calibrated.estimator
        self.base = compile_estimator(inner.estimator if type(inner) is FrozenEstimator else inner)
        (calibrator,) = calibrated.calibrators
        if type(calibrator) is IsotonicRegression:
            # IsotonicRegression.predict with out_of_bounds="clip": clip, then interpolate.
            x, y = calibrator.X_thresholds_, calibrator.y_thresholds_
            self.map = lambda r: np.interp(np.clip(r, x[0], x[-1]), x, y)
        elif calibrated.method == "sigmoid":
            a, b = float(calibrator.a_), float(calibrator.b_)
            self.map = lambda r: expit(-(a * r + b))
        else:
            raise UnsupportedModelError(f"calibration method {calibrated.method!r}")
        self.name = f"{self.base.name}+{calibrated.method}"

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.map(self.base.response(X))


class EstimatorScorer:
    """Any binary classifier's own ``predict_proba`` on the encoded matrix."""

    def __init__(self, est: Any) -> None:
        self.est = est
        self.name = type(est).__name__

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Positive-class probability of each row of the encoded matrix ``X``."""
        return self.est.predict_proba(X)[:, 1]


def compile_estimator(est: Any) -> Any:
    """Compiled scorer of a fitted forest, gradient boosting or logistic model, calibrated or not.

    Raises:
        UnsupportedModelError: Another estimator, or an unsupported variant of these.
    """
    if type(est) is RandomForestClassifier:
        return _RandomForestScorer(est)
    if type(est) is HistGradientBoostingClassifier:
        return _HistGradientBoostingScorer(est)
    if type(est) is LogisticRegression:
        return _LogisticScorer(est)
    if type(est) is CalibratedClassifierCV:
        return _CalibratedScorer(est)
    raise UnsupportedModelError(f"estimator {type(est).__name__}")
