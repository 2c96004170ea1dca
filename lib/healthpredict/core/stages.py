"""One typed parameter model per notebook stage, and one for the monitoring loop.

Each parameter's name, type, default and help text is declared once, here. The notebook check
before a kernel starts (:mod:`healthpredict.runs.parameters`), the ``healthpredict`` command
options and the Airflow DAG ``Param`` objects are all derived from these models; the notebooks'
parameters cells repeat them as plain literals (papermill injects after them), and a test keeps
the two equal.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from healthpredict.core.constants import (
    FAMILIES,
    GROWTH_TRIGGER,
    MIN_BATCH_ROWS,
    MONITORING_EXPERIMENT,
    REFERENCE_SPLIT,
    RETRAINING_EXPERIMENT,
    STREAM_SPLIT,
    TRAINING_EXPERIMENT,
)

# The notebook is told the folder its run writes into; the runner fills it in.
RUN_DIR_PARAMETER = "run_dir"

DEFAULT_TARGET = "<30"
TARGET_HELP = 'readmission target: "<30" (within 30 days) or "any"'


def _model_name_field() -> Any:
    return Field(None, description="registered model name (None: the HP_MODEL_NAME setting)")


def _run_dir_field() -> Any:
    return Field(None, description="set by the runner: the folder this run writes into")


def _experiment_field(default: str, what: str) -> Any:
    return Field(default, description=f"MLflow experiment of the {what}")


class StageParams(BaseModel):
    """Base of the parameter models: unknown names and loose types are errors."""

    # strict: "5" is no int and 1 no bool, as papermill would inject them verbatim.
    model_config = ConfigDict(extra="forbid", strict=True)

    notebook: ClassVar[str] = ""

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> Self:
        """The model of a notebook's parameters, read from its globals after papermill's cell."""
        return cls(**{name: namespace[name] for name in cls.model_fields if name in namespace})

    def as_parameters(self) -> dict[str, Any]:
        """The values as notebook parameters (JSON-safe; ``run_dir`` is left to the runner)."""
        return self.model_dump(mode="json", exclude={RUN_DIR_PARAMETER})


class EdaParams(StageParams):
    """Parameters of ``notebooks/01_eda.py``."""

    notebook: ClassVar[str] = "01_eda"

    data_dir: str | None = Field(
        None,
        description="folder or s3:// URI of the prepared splits; None = <storage>/processed_data",
    )
    split: str = Field(
        REFERENCE_SPLIT,
        description="split to describe: initial_train, validation, test or future_data",
    )
    stream_split: str = Field(
        STREAM_SPLIT, description='chronological stream for the drift view ("" to skip it)'
    )
    target: str = Field(DEFAULT_TARGET, description=TARGET_HELP)
    n_bins: int = Field(
        10,
        ge=1,
        description="number of equal-size bins of encounter order in the chronological view",
    )


class TrainParams(StageParams):
    """Parameters of ``notebooks/02_train_hpo.py``."""

    notebook: ClassVar[str] = "02_train_hpo"

    data_dir: str | None = Field(
        None, description="prepared data folder or s3:// URI (None: <storage>/processed_data)"
    )
    families: list[str] = Field(
        list(FAMILIES), description="model families to search: logreg, rf, hgb"
    )
    n_trials: int = Field(30, ge=1, description="Optuna trials in all (split over the workers)")
    timeout_s: float | None = Field(
        None, description="stop starting new trials after this many seconds (None: no limit)"
    )
    n_workers: int = Field(
        1, ge=1, description="worker processes sharing one Optuna study (1 is reproducible)"
    )
    study_storage: str | None = Field(
        None,
        description="Optuna storage: None (journal file), a path, sqlite:/// or postgresql URL",
    )
    study_name: str | None = Field(
        None,
        description="a study already searched by separate workers in study_storage "
        "(None: search here)",
    )
    seed: int = Field(42, description="seed of the sampler and of every estimator")
    cv_folds: int = Field(
        0,
        ge=0,
        description=">= 2: judge trials by patient-grouped CV over train + validation "
        "(0: validation)",
    )
    target: str = Field(DEFAULT_TARGET, description=TARGET_HELP)
    target_recall: float | None = Field(
        None, description="choose the threshold reaching this validation recall (None: max F1)"
    )
    mlflow_experiment_name: str = _experiment_field(TRAINING_EXPERIMENT, "search")
    model_name: str | None = _model_name_field()
    run_dir: str | None = _run_dir_field()


class MonitorParams(StageParams):
    """Parameters of ``notebooks/03_drift_monitor.py``."""

    notebook: ClassVar[str] = "03_drift_monitor"

    new_data_path: str = Field(
        "", description="raw batch CSV to monitor (path or s3:// URI); labels optional"
    )
    reference_data_path: str | None = Field(
        None, description="raw reference CSV; None: <processed_data>/initial_train.csv"
    )
    model_reference_path: str | list[str] | None = Field(
        None, description="held-out CSV(s) for predictions; None: validation+test near it"
    )
    mlflow_model_uri: str | None = Field(
        None,
        description="registry URI of the production model; None: champion of HP_MODEL_NAME",
    )
    evidently_reports_path: str | None = Field(
        None, description="folder/s3:// URI of the HTML reports; None: <run dir>/reports"
    )
    mlflow_experiment_name: str = _experiment_field(MONITORING_EXPERIMENT, "monitoring runs")
    drift_share_threshold: float | None = Field(
        None, description="share of drifted columns meaning data drift; None: one column"
    )
    prediction_drift_threshold: float | None = Field(
        None, description="threshold on the probabilities' distance; None: calibrated"
    )
    performance_tolerance: float | None = Field(
        None, description="largest ROC AUC drop that is no drift; None: calibrated"
    )
    false_alarm_rate: float = Field(
        0.05, description="target share of no-drift batches reported as drift (calibration)"
    )
    n_null_batches: int = Field(
        1000,
        ge=1,
        description="no-drift batches to calibrate on: at most this many time-ordered windows (plus random batches)",
    )
    labelled_data_path: str | list[str] | None = Field(
        None,
        description="labelled batch CSV(s) whose labels arrived since the last batch: the "
        "model's realised ROC AUC is measured on them",
    )
    new_labelled_rows: int = Field(
        0, ge=0, description="labelled rows the model never learned from (the growth trigger)"
    )
    growth_trigger: float | None = Field(
        GROWTH_TRIGGER,
        description="retrain when new labelled rows reach this share of the model's training "
        "rows (None: off)",
    )
    run_dir: str | None = _run_dir_field()


class RetrainParams(StageParams):
    """Parameters of ``notebooks/04_retrain.py``."""

    notebook: ClassVar[str] = "04_retrain"

    retraining_data_path: str | list[str] | None = Field(
        None,
        description="every labelled raw batch CSV to learn from (paths/s3:// URIs, or one string)",
    )
    gate_data_path: str | list[str] | None = Field(
        None,
        description="those of them the champion never learned from (the gate holdout is drawn "
        "from them); None: all",
    )
    data_dir: str | None = Field(
        None,
        description="prepared data folder with the fixed splits (None: <storage>/processed_data)",
    )
    holdout_fraction: float = Field(
        0.3, description="share of the gate data's patients held out of training, for the gate"
    )
    n_trials: int = Field(
        8, ge=1, description="search trials; the first re-evaluates the champion's parameters"
    )
    non_inferiority_margin: float | None = Field(
        0.01,
        description="promote a challenger trained on clearly more data unless its ROC AUC may be "
        "lower by more than this (None: only a gain beyond noise promotes)",
    )
    gate_confidence: float = Field(
        0.95, description="level of the paired bootstrap interval of the ROC AUC gain"
    )
    seed: int = Field(42, description="seed of the holdout split, the sampler and the estimators")
    mlflow_experiment_name: str = _experiment_field(RETRAINING_EXPERIMENT, "retraining run")
    model_name: str | None = _model_name_field()
    holdout_output_path: str | None = Field(
        None, description="raw CSV for the new holdout; None: <storage>/monitoring/reference/"
    )
    promote: bool = Field(
        True,
        description="move the champion alias when the gate promotes (false: the monitoring loop "
        "records its intent first, then moves it)",
    )
    run_dir: str | None = _run_dir_field()


# Where the loop's labels come from: its own replay of the stream's labels, or outside.
LABEL_SOURCES = ("replay", "external")


class LoopParams(StageParams):
    """Settings of the monitoring loop (``healthpredict loop``/``demo``, the monitoring DAG)."""

    batch_size: int = Field(
        2000, ge=MIN_BATCH_ROWS, description="rows per monitored batch of the future stream"
    )
    max_batches: int | None = Field(
        None, ge=1, description="stop after this many batches (default: all)"
    )
    retrain_window: int | None = Field(
        None,
        ge=1,
        description="labelled batches a retraining learns from: None = all so far (cumulative), "
        "N = the last N",
    )
    label_delay_batches: int = Field(
        1, ge=0, description="batches after which a batch's labels are due (0: with the batch)"
    )
    label_timeout_batches: int = Field(
        3,
        ge=0,
        description="batches past due after which missing labels are recorded as a label gap",
    )
    label_source: str = Field(
        LABEL_SOURCES[0],
        pattern=f"^({'|'.join(LABEL_SOURCES)})$",
        description='"replay": the loop delivers the stream\'s labels when due (stand-in for the '
        'hospital); "external": labels are put in <storage>/monitoring/labels/ by others',
    )
    data_dir: str | None = Field(
        None, description="prepared data folder (default: <storage>/processed_data)"
    )
    model_uri: str | None = Field(
        None, description="production model (default: models:/<name>@champion)"
    )


STAGES: dict[str, type[StageParams]] = {
    model.notebook: model for model in (EdaParams, TrainParams, MonitorParams, RetrainParams)
}


def stage_model(notebook: str) -> type[StageParams] | None:
    """The parameter model of a pipeline notebook (by name, e.g. ``02_train_hpo``), or None."""
    return STAGES.get(notebook)


def user_fields(model: type[StageParams]) -> dict[str, FieldInfo]:
    """The fields a person sets, in declaration order (``run_dir`` is the runner's)."""
    return {n: f for n, f in model.model_fields.items() if n != RUN_DIR_PARAMETER}


def minimum(field: FieldInfo) -> int | float | None:
    """The field's ``ge`` bound, if it has one."""
    for rule in field.metadata:
        bound = getattr(rule, "ge", None)
        if bound is not None:
            return bound
    return None


def value_types(annotation: Any) -> tuple[Any, ...]:
    """The types a field accepts, ``None`` as ``type(None)`` (``int | None`` -> (int, NoneType))."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def _json_type(kind: Any) -> str:
    if typing.get_origin(kind) is list or kind is list:
        return "array"
    if typing.get_origin(kind) is dict or kind is dict:
        return "object"
    return _JSON_TYPES[kind]


def dag_param(field: FieldInfo) -> dict[str, Any]:
    """Keyword arguments of an Airflow ``Param`` for one field (plain data, no Airflow import).

    Returns:
        ``default``, ``type`` (a JSON-schema type, or a list of them with ``"null"`` first when
        the field is optional), ``description``, and ``minimum``/``items`` when they apply.
    """
    kinds = sorted(value_types(field.annotation), key=lambda k: k is not type(None))
    json_types = [_json_type(k) for k in kinds]
    spec: dict[str, Any] = {
        "default": field.get_default(call_default_factory=True),
        "type": json_types[0] if len(json_types) == 1 else json_types,
        "description": field.description,
    }
    if "array" in json_types:
        spec["items"] = {"type": "string"}
    if (bound := minimum(field)) is not None:
        spec["minimum"] = bound
    return spec


def dag_params(
    model: type[StageParams], names: dict[str, str] | list[str]
) -> dict[str, dict[str, Any]]:
    """Airflow ``Param`` keyword arguments of some of a model's fields, keyed by DAG param name.

    Args:
        model: The stage (or loop) model.
        names: Field names to expose; a dict maps a field name to the DAG param's name where
            the DAG shows it under another one (e.g. ``{"n_trials": "retrain_n_trials"}``).

    Returns:
        ``{dag_param_name: {"default": ..., "type": ..., "description": ..., ...}}``.
    """
    mapping = names if isinstance(names, dict) else {name: name for name in names}
    return {dag: dag_param(model.model_fields[field]) for field, dag in mapping.items()}
