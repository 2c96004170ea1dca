"""Benchmark of the serving API against ``mlflow models serve`` (not a test: it prints and records).

Trains a random forest (real UCI rows when available, else synthetic), registers it as the
champion of a temporary sqlite MLflow store, then serves that one registered model three ways,
side by side on 127.0.0.1: our app on the host (uvicorn, 2 workers), our app in its image (the
model exported and baked in, ``podman run --network host``, 2 workers) and ``mlflow models serve
--env-manager local`` (2 workers). ``wrk`` posts JSON to each: single records over 1 and 8
connections and 1,000-record batches over 1 connection, for a bounded time per run. Our API gets
a bearer token (a token file, as in a cluster); mlflow has no authentication.

Goals on 2 cores: single-record p50 <= 5 ms, >= 1,000 requests/s, a 1,000-record batch in
<= 100 ms, >= 10x mlflow's single-record throughput. Writes ``var/bench/serve.json`` with
``single_row_rps`` (8 connections), ``single_row_p50_ms`` / ``single_row_p99_ms`` (1
connection), ``batch_1000_ms`` (p50), ``ratio_vs_mlflow`` (single-record throughput) and
every run in ``runs``; the image's figures under ``image_*`` (``--no-image`` skips it).

Usage: ``make bench-serve`` or ``python benchmarks/bench_serve.py [--duration 10]``.
Needs ``wrk`` (Debian: ``apt-get install -y wrk``), and for the image podman, buildah, runc and
debootstrap.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from healthpredict.mlops.image_check import free_port

ROOT = Path(__file__).resolve().parents[1]
RF_PARAMS = {
    "n_estimators": 300,
    "max_depth": 14,
    "min_samples_leaf": 4,
    "max_features": "sqrt",
    "class_weight": "balanced_subsample",
}
# The benchmark's own tag, removed at the end (not healthpredict-api: a deployment's name).
BENCH_IMAGE = "healthpredict-api-bench"
GOALS = {
    "single_row_p50_ms": 5.0,
    "single_row_rps": 1000.0,
    "batch_1000_ms": 100.0,
    "ratio_vs_mlflow": 10.0,
}
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("HP_BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
local f = assert(io.open(os.getenv("HP_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format(
    "HP_BENCH {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"max_us\\": %d, \\"non_2xx\\": %d, \\"socket_errors\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def training_rows(n_rows: int):
    """(raw frame, data source): real UCI rows when the data is there, else synthetic."""
    from healthpredict.data.uci import load_uci, real_data_source

    if source := real_data_source():
        return load_uci(source).frame.sample(n_rows, random_state=0), "uci"
    from healthpredict.data.synthetic import generate

    return generate(n_rows, seed=0), "synthetic"


def register_model(tracking_uri: str, frame, source: str) -> str:
    """Fit the random forest on ``frame`` and register it as the champion; return the version."""
    import mlflow

    from healthpredict.data.schema import make_target
    from healthpredict.mlops import registry
    from healthpredict.mlops.tracking import setup_mlflow, use_experiment
    from healthpredict.modeling.models import make_pipeline

    setup_mlflow(tracking_uri)
    use_experiment("bench-serve")
    X, y = frame.drop(columns=["readmitted"]), make_target(frame)
    pipe = make_pipeline("rf", RF_PARAMS, n_jobs=2).fit(X, y)
    pipe.named_steps["model"].n_jobs = None  # serve single-threaded, as training logs it
    with mlflow.start_run():
        info = registry.log_model(
            pipe,
            threshold=0.5,
            target="<30",
            test_metrics={},
            input_example=X.head(50),
            data_source=source,
            params={"family": "rf", **RF_PARAMS},
        )
    return info.version


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll ``url`` until it answers 200 (or the process dies, or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def post(url: str, body: bytes, token: str | None = None) -> dict:
    """POST JSON (with a bearer token when given) and return the parsed answer (raises on non-2xx)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def run_wrk(
    url: str, body_file: Path, lua: Path, connections: int, duration: int, token: str | None
) -> dict:
    """One wrk run; returns requests/s, latency percentiles (ms) and error counts."""
    env = {**os.environ, "HP_BENCH_BODY": str(body_file), "HP_BENCH_TOKEN": token or ""}
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("HP_BENCH "))
    raw = json.loads(line.removeprefix("HP_BENCH "))
    seconds = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p90_ms": round(raw["p90_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
    }


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start a server in its own process group (so that its workers stop with it)."""
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`start`, workers included."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def build_image(version: str, tmp: Path) -> str:
    """Export the registered version and bake it into the serving image; return the tag."""
    from healthpredict.mlops.containers import build_serving_image, default_podman, serving_tag
    from healthpredict.serving.model_store import export_model

    started = time.perf_counter()
    model_dir = export_model(f"models:/HealthPredict/{version}", tmp / "model")
    tag = build_serving_image(default_podman(), model_dir, serving_tag(version, BENCH_IMAGE))
    print(f"built {tag} ({time.perf_counter() - started:.0f} s)")
    return tag


def start_image(tag: str, name: str, port: int, workers: int, tokens: Path) -> dict:
    """Run the image on 127.0.0.1:``port`` (host network); return its size and cold start."""
    from healthpredict.mlops.containers import default_podman
    from healthpredict.mlops.image_check import start_serving

    podman = default_podman()
    cold_start = start_serving(podman, tag, name=name, port=port, tokens=tokens, workers=workers)
    return {"image_mb": podman.image_mb(tag), "image_cold_start_s": round(cold_start, 2)}


def stop_image(tag: str, name: str) -> None:
    """Remove the container and the benchmark's image tag (cached layers stay in the store)."""
    from healthpredict.mlops.containers import default_podman

    podman = default_podman()
    podman.remove(name)
    podman.remove_image(tag)


def image_report(runs: dict, info: dict, agree: float | None) -> dict:
    """The image's figures for serve.json (empty when the image was skipped)."""
    if "image_one_c8" not in runs:
        return {}
    return {
        "image_single_row_rps": runs["image_one_c8"]["rps"],
        "image_single_row_p50_ms": runs["image_one_c1"]["p50_ms"],
        "image_single_row_p99_ms": runs["image_one_c1"]["p99_ms"],
        "image_batch_1000_ms": runs["image_batch_c1"]["p50_ms"],
        "ratio_image_vs_mlflow": round(
            runs["image_one_c8"]["rps"] / runs["mlflow_one_c8"]["rps"], 1
        ),
        "ratio_image_vs_host": round(runs["image_one_c8"]["rps"] / runs["ours_one_c8"]["rps"], 2),
        "max_abs_diff_image_vs_host": agree,
        **info,
    }


def main() -> int:
    """Run the benchmark; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--train-rows", type=int, default=30_000, help="training rows")
    parser.add_argument("--workers", type=int, default=2, help="workers of each server")
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "serve.json"))
    parser.add_argument("--no-image", action="store_true", help="skip our API in its image")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-serve needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    with_image = not args.no_image
    if with_image and shutil.which("podman") is None:
        print("bench-serve runs the image with podman: apt-get install -y podman buildah runc "
              "debootstrap (or pass --no-image)", file=sys.stderr)  # fmt: skip
        return 2

    with tempfile.TemporaryDirectory(prefix="hp-bench-serve-") as tmp_dir:
        tmp = Path(tmp_dir)
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ.update(HP_STORAGE=str(tmp / "var"), HP_MLFLOW_TRACKING_URI=tracking)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from healthpredict.core.settings import get_settings

        get_settings.cache_clear()
        started = time.perf_counter()
        frame, source = training_rows(args.train_rows)
        version = register_model(tracking, frame, source)
        print(f"registered a random forest {RF_PARAMS} on {len(frame):,} {source} rows as version {version} "
              f"({time.perf_counter() - started:.0f} s)")  # fmt: skip

        from healthpredict.data.schema import ALIASES
        from healthpredict.modeling.runtime.records import records_from_frame
        from healthpredict.serving.auth import token_line

        token = secrets.token_urlsafe(32)
        tokens = tmp / "tokens"
        tokens.write_text(token_line("bench-serve", token) + "\n")
        tokens.chmod(0o644)  # read by the image's uid 10001
        image = build_image(version, tmp) if with_image else None

        score = training_rows(2_000)[0].drop(columns=["readmitted"])
        records = records_from_frame(score)
        # The original column names (glyburide-metformin), as a client of either server sends.
        canonical = [{ALIASES.get(k, k): v for k, v in r.items()} for r in records]
        bodies = {
            ("ours", "one"): json.dumps(canonical[0]),
            ("ours", "batch"): json.dumps(canonical[:1000]),
            ("mlflow", "one"): json.dumps({"dataframe_records": canonical[:1]}),
            ("mlflow", "batch"): json.dumps({"dataframe_records": canonical[:1000]}),
        }
        files = {}
        for key, text in bodies.items():
            files[key] = tmp / f"{key[0]}-{key[1]}.json"
            files[key].write_text(text)
        lua = tmp / "post.lua"
        lua.write_text(LUA)

        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking,
            "HP_SERVE_TOKENS_FILE": str(tokens),
            "OMP_NUM_THREADS": "1",
            # mlflow models serve runs "uvicorn" from PATH: the venv's, like ours.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        ours_port, mlflow_port, image_port = free_port(), free_port(), free_port()
        ours = start(
            [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(ROOT / "serving"),
             "--host", "127.0.0.1", "--port", str(ours_port), "--workers", str(args.workers),
             "--no-access-log", "--log-level", "warning"],
            env, tmp / "ours.log",
        )  # fmt: skip
        served = start(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/HealthPredict@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port),
             "-w", str(args.workers)],
            env, tmp / "mlflow.log",
        )  # fmt: skip
        container = f"hp-bench-serve-{os.getpid()}"
        urls = {
            "ours": f"http://127.0.0.1:{ours_port}/predict",
            "mlflow": f"http://127.0.0.1:{mlflow_port}/invocations",
        }
        tokens_of = {"ours": token, "image": token, "mlflow": None}
        runs: dict[str, dict] = {}
        image_info: dict = {}
        try:
            if image:
                image_info = start_image(image, container, image_port, args.workers, tokens)
                urls["image"] = f"http://127.0.0.1:{image_port}/predict"
            try:
                wait_http(f"http://127.0.0.1:{ours_port}/ready", ours)
                wait_http(f"http://127.0.0.1:{mlflow_port}/ping", served)
            except (RuntimeError, TimeoutError):
                for log in ("ours.log", "mlflow.log"):
                    print(f"--- {log}:\n" + (tmp / log).read_text()[-3000:], file=sys.stderr)
                raise
            info = json.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{ours_port}/model-info").read()
            )
            print(f"both servers up; our inference path: {info['inference']}")
            # Same model, same records: the servers must agree before they are timed.
            ours_p = [
                p["readmission_probability"]
                for p in post(urls["ours"], bodies["ours", "batch"].encode(), token)["predictions"]
            ]
            theirs = post(urls["mlflow"], bodies["mlflow", "batch"].encode())["predictions"]
            theirs_p = [row[1] if isinstance(row, list) else row["1"] for row in theirs]
            agree = max(abs(a - b) for a, b in zip(ours_p, theirs_p, strict=True))
            print(f"max |ours - mlflow| over 1,000 records: {agree:.2e}")
            agree_image = None
            if image:
                image_p = [
                    p["readmission_probability"]
                    for p in post(urls["image"], bodies["ours", "batch"].encode(), token)[
                        "predictions"
                    ]
                ]
                agree_image = max(abs(a - b) for a, b in zip(ours_p, image_p, strict=True))
                print(
                    f"max |ours on the host - ours in the image| over 1,000 records: {agree_image:.2e}"
                )
            plan = [("one", 1), ("one", 8), ("batch", 1)]
            for name in urls:
                body_of = "mlflow" if name == "mlflow" else "ours"
                for _ in range(20):  # warm-up: first requests pay lazy imports and caches
                    post(urls[name], bodies[body_of, "one"].encode(), tokens_of[name])
                for kind, conns in plan:
                    key = f"{name}_{kind}_c{conns}"
                    runs[key] = run_wrk(
                        urls[name], files[body_of, kind], lua, conns, args.duration, tokens_of[name]
                    )
                    r = runs[key]
                    print(f"  {key:<18} {r['rps']:>9.1f} req/s  p50 {r['p50_ms']:>8.2f} ms  "
                          f"p99 {r['p99_ms']:>8.2f} ms  non-2xx {r['non_2xx']}  errors {r['socket_errors']}")  # fmt: skip
        finally:
            stop(ours)
            stop(served)
            if image:
                stop_image(image, container)

    report = {
        "single_row_rps": runs["ours_one_c8"]["rps"],
        "single_row_p50_ms": runs["ours_one_c1"]["p50_ms"],
        "single_row_p99_ms": runs["ours_one_c1"]["p99_ms"],
        "batch_1000_ms": runs["ours_batch_c1"]["p50_ms"],
        "ratio_vs_mlflow": round(runs["ours_one_c8"]["rps"] / runs["mlflow_one_c8"]["rps"], 1),
        "ratio_vs_mlflow_single_connection": round(
            runs["ours_one_c1"]["rps"] / runs["mlflow_one_c1"]["rps"], 1
        ),
        "ratio_vs_mlflow_batch_1000": round(
            runs["ours_batch_c1"]["rps"] / runs["mlflow_batch_c1"]["rps"], 1
        ),
        "mlflow_single_row_rps": runs["mlflow_one_c8"]["rps"],
        "mlflow_single_row_p50_ms": runs["mlflow_one_c1"]["p50_ms"],
        "mlflow_batch_1000_ms": runs["mlflow_batch_c1"]["p50_ms"],
        "max_abs_diff_vs_mlflow": agree,
        **image_report(runs, image_info, agree_image),
        "inference": info["inference"],
        "model": {"family": "rf", **RF_PARAMS, "train_rows": len(frame), "data_source": source},
        "workers": args.workers,
        "duration_s_per_run": args.duration,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "runs": runs,
    }
    report["goals"] = {
        "single_row_p50_ms <= 5": report["single_row_p50_ms"] <= GOALS["single_row_p50_ms"],
        "single_row_rps >= 1000": report["single_row_rps"] >= GOALS["single_row_rps"],
        "batch_1000_ms <= 100": report["batch_1000_ms"] <= GOALS["batch_1000_ms"],
        "ratio_vs_mlflow >= 10": report["ratio_vs_mlflow"] >= GOALS["ratio_vs_mlflow"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nbench-serve ({args.workers} workers each, {os.cpu_count()} cores, wrk on the same machine)\n"
        f"  single record, 8 conn   {report['single_row_rps']:>9.1f} req/s  (mlflow {report['mlflow_single_row_rps']:.1f}; "
        f"x{report['ratio_vs_mlflow']})\n"
        f"  single record, 1 conn   p50 {report['single_row_p50_ms']:.2f} ms  p99 {report['single_row_p99_ms']:.2f} ms  "
        f"(mlflow p50 {report['mlflow_single_row_p50_ms']:.2f} ms)\n"
        f"  1,000-record batch      p50 {report['batch_1000_ms']:.1f} ms  (mlflow {report['mlflow_batch_1000_ms']:.1f} ms)\n"
        + (
            f"  in the image, 8 conn    {report['image_single_row_rps']:>9.1f} req/s  (x{report['ratio_image_vs_mlflow']} mlflow, "
            f"x{report['ratio_image_vs_host']} host)\n"
            f"  in the image, 1 conn    p50 {report['image_single_row_p50_ms']:.2f} ms  p99 {report['image_single_row_p99_ms']:.2f} ms\n"
            f"  in the image, batch     p50 {report['image_batch_1000_ms']:.1f} ms  ({report['image_mb']} MB image)\n"
            if image else ""
        )
        + "".join(f"  goal {k:<24} {'met' if v else 'MISSED'}\n" for k, v in report["goals"].items())
        + f"  written                 {out}"
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
