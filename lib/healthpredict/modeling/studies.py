"""Optuna studies: where they are kept, how one is made, found and checked, its trial table.

A search's settings (:class:`SearchSettings`) say which study storage holds it: by default a
journal file under ``<storage>/optuna/`` (no server, one machine), else ``sqlite:///...`` or a
PostgreSQL URL (``postgresql+psycopg://user@host/db``) that workers on several machines share.
:func:`create_study` makes a study (idempotent, for retried tasks; refused when it exists with
other families, seed or folds), :func:`load_study` finds one with a clear error, and
:func:`worker_shares` splits a trial budget over workers. The search itself is
:mod:`healthpredict.modeling.search`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from healthpredict.core import layout, storage
from healthpredict.core.settings import get_settings
from healthpredict.modeling.models import FAMILIES, split_trial_params


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs; the data, target and study name are given separately.

    Attributes:
        families: Model families to search over.
        n_trials: Trials in all (split evenly over the workers).
        timeout_s: Stop starting new trials after this many seconds (per worker).
        n_workers: Worker processes sharing the study (1 = in this process, reproducible).
        study_storage: Optuna storage (see :func:`open_study_storage`).
        seed: Sampler and estimator seed.
        cv_folds: Score trials by patient-grouped cross-validation over train + validation
            with this many folds (< 2: on validation); see :func:`search_folds`.
        enqueue: Trial params (see :func:`~healthpredict.modeling.models.trial_params_for`)
            to evaluate first (warm start).
        progress: Show a tqdm bar over trials on stderr.
    """

    families: Sequence[str] = FAMILIES
    n_trials: int = 30
    timeout_s: float | None = None
    n_workers: int = 1
    study_storage: str | None = None
    seed: int = 42
    cv_folds: int = 0
    enqueue: Sequence[dict[str, Any]] = ()
    progress: bool = True


def default_study_storage() -> str:
    """Journal file for studies: ``<storage>/optuna/journal.log`` (local cache dir under S3)."""
    root = get_settings().storage
    base = get_settings().cache_dir if storage.is_s3(root) else root
    return str((Path(layout.optuna_dir(base)) / "journal.log").expanduser().resolve())


def open_study_storage(spec: str | None = None) -> Any:
    """Optuna storage for ``spec``: a journal file path (default) or a database URL.

    Args:
        spec: None (journal file, see :func:`default_study_storage`), a path (journal file), or
            an SQLAlchemy URL such as ``sqlite:///var/optuna.db`` or
            ``postgresql+psycopg://user@host:5432/optuna`` (several machines; the password from
            ``PGPASSWORD`` or ``~/.pgpass``, so that it is in no record).
    """
    spec = spec or default_study_storage()
    if "://" in spec:
        if spec.startswith("sqlite:///"):
            Path(spec[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(
                parents=True, exist_ok=True
            )
        return RDBStorage(spec)
    path = Path(spec).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def redact(url: str | None) -> str | None:
    """A storage URL without its password, fit for logs and MLflow params."""
    if not url or "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def make_sampler(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """Seeded multivariate TPE; its random start-up phase scales with the whole budget."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group model the conditional per-family spaces jointly.
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=min(10, max(1, n_trials // 3)),
            multivariate=True,
            group=True,
        )


def make_pruner() -> optuna.pruners.BasePruner:
    """Median pruning once four trials have reported (see ``search.PRUNE_FROM``)."""
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)


class StudyNotFoundError(LookupError):
    """The named study is not in the storage, or has no completed trial to use."""


def load_study(study_name: str, study_storage: str | None = None, **kwargs: Any) -> optuna.Study:
    """Load an existing study; a clear :class:`StudyNotFoundError` when the storage lacks it.

    Args:
        study_name: The study.
        study_storage: Its storage (see :func:`open_study_storage`).
        **kwargs: Passed to :func:`optuna.load_study` (``sampler``, ``pruner``).
    """
    storage_obj = open_study_storage(study_storage)
    try:
        return optuna.load_study(study_name=study_name, storage=storage_obj, **kwargs)
    except KeyError:
        where = redact(study_storage) or default_study_storage()
        raise StudyNotFoundError(
            f"no Optuna study {study_name!r} in storage {where}: create it first "
            "(healthpredict search-study create, or the DAG's plan_search task)"
        ) from None


def worker_shares(n_trials: int, n_workers: int) -> list[int]:
    """Trials per worker: ``n_trials`` split as evenly as possible (no worker gets none).

    Raises:
        ValueError: ``n_trials`` or ``n_workers`` below 1.
    """
    if n_trials < 1 or n_workers < 1:
        raise ValueError(f"n_trials and n_workers must be >= 1, got {n_trials}, {n_workers}")
    k = min(n_workers, n_trials)
    return [n_trials // k + (i < n_trials % k) for i in range(k)]


_STUDY_ATTRS = ("families", "seed", "cv_folds")


def _study_attrs(settings: SearchSettings) -> dict[str, Any]:
    return {
        "families": list(settings.families),
        "seed": settings.seed,
        "cv_folds": settings.cv_folds,
    }


def check_study_settings(study: optuna.Study, settings: SearchSettings) -> None:
    """Refuse a study made with other families, seed or folds than ``settings``.

    Its trials would mean something else: other candidates, or scores on other folds.

    Raises:
        ValueError: Names the study and both settings.
    """
    found = {name: study.user_attrs.get(name) for name in _STUDY_ATTRS}
    wanted = _study_attrs(settings)
    if found != wanted:
        raise ValueError(
            f"study {study.study_name!r} was made with other settings {found}, not {wanted}: "
            "use the study's settings, or a new study name"
        )


def create_study(
    study_name: str, settings: SearchSettings, *, exist_ok: bool = True
) -> optuna.Study:
    """Create the study the workers share (direction, sampler, pruner, warm-start trials).

    Idempotent by default, for retried tasks: an existing study of the same name is loaded,
    provided it was made with the same families, seed and folds (its trials would mean
    something else otherwise); enqueued trials are not queued twice.

    Args:
        study_name: The study.
        settings: Its storage, families, seed, folds and warm-start trials.
        exist_ok: Load an existing study instead of refusing it.

    Raises:
        optuna.exceptions.DuplicatedStudyError: It exists and ``exist_ok`` is off.
        ValueError: It exists with other families, seed or folds.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=open_study_storage(settings.study_storage),
        direction="maximize",
        sampler=make_sampler(settings.seed, settings.n_trials),
        pruner=make_pruner(),
        load_if_exists=exist_ok,
    )
    if any(name in study.user_attrs for name in _STUDY_ATTRS):
        check_study_settings(study, settings)
    else:
        for name, value in _study_attrs(settings).items():
            study.set_user_attr(name, value)
    for params in settings.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, worker, state, family, value (val ROC AUC), seconds, params."""
    rows = []
    for t in study.trials:
        family = t.params.get("family")
        _, params = split_trial_params(t.params) if family else (None, {})
        duration = t.duration.total_seconds() if t.duration is not None else math.nan
        rows.append(
            {
                "trial": t.number,
                "worker": t.user_attrs.get("worker"),
                "state": t.state.name,
                "family": family,
                "val_roc_auc": t.value,
                "seconds": round(duration, 2),
                "params": json.dumps(params, default=str),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["trial", "worker", "state", "family", "val_roc_auc", "seconds", "params"],
    )
