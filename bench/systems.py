"""The systems the benchmark compares: started and stopped on 127.0.0.1, or measured in-process.

Served over gRPC: tlserve (N workers; native API and its KServe V2 endpoint), the gRPC
ceiling (`tlserve.bench.ceiling`), the naive approach (`tlserve.bench.naive_server`) and
MLServer 1.7.1 with a custom runtime over the same bundle, in its own venv. In-process:
the compute ceiling (tlserve's preprocessing + onnxruntime, no RPC) and fastText `predict`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_VENV = Path(os.environ.get("TLSERVE_MLSERVER_VENV", ROOT / ".venv-mlserver"))
MLSERVER_PINS = Path(__file__).resolve().parent / "mlserver-requirements.txt"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tlserve_serve_command(repository: Path, port: int, metrics_port: int = 0, workers: int = 1,
                          http_port: int = 0, entry: str = "tlserve.cli") -> list[str]:
    """`tlserve serve` on 127.0.0.1:`port` (and HTTP on `http_port`; 0: none), logging warnings only;
    `entry` is the module run (`tlserve.bench.cached_model_server`: the same server without model work)."""
    return [sys.executable, "-m", entry, "--log-level", "WARNING", "serve", "--repository", str(repository),
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
            "--http-port", str(http_port), "--workers", str(workers)]


@dataclass
class Running:
    """A server process started by the benchmark."""

    name: str
    target: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int = 0
    http_port: int = 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(name: str, command: list[str], logs: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    handle = open(log, "wb")  # noqa: SIM115 (the process owns it)
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               cwd=cwd)
    return process, log


def _wait(running: Running, ready: Callable[[], bool], timeout: float) -> Running:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"{running.name} exited with {running.process.returncode}; see {running.log}:\n"
                               + running.log.read_text(errors="replace")[-3000:])
        try:
            if ready():
                return running
        except Exception:
            pass
        time.sleep(0.2)
    running.stop()
    raise RuntimeError(f"{running.name} not ready after {timeout:.0f}s; see {running.log}")


def _classify_works(target: str, model: str) -> bool:
    from tlserve.client import Classifier

    with Classifier(target, model=model, timeout=5, retries=0) as client:
        return bool(client.classify(["a small dog"]))


def start_tlserve(name: str, repository: Path, workers: int, logs: Path, timeout: float = 120,
                  extra: tuple[str, ...] = (), entry: str = "tlserve.cli", env: dict[str, str] | None = None
                  ) -> Running:
    # HTTP on, as users run it: the gRPC figures include its cost.
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    command = tlserve_serve_command(repository, port, metrics_port, workers, http_port, entry)
    process, log = _spawn(name, [*command, *extra], logs, env)
    running = Running(name, f"127.0.0.1:{port}", process, log, metrics_port, http_port)

    def serving() -> bool:
        from tlserve.client import Classifier

        with Classifier(running.target, timeout=2) as client:
            return client.health() == "SERVING"

    return _wait(running, serving, timeout)


def start_ceiling(name: str, workers: int, labels: int, logs: Path) -> Running:
    port = free_port()
    process, log = _spawn(name, [sys.executable, "-m", "tlserve.bench.ceiling", "--port", str(port),
                                 "--workers", str(workers), "--labels", str(labels)], logs)
    running = Running(name, f"127.0.0.1:{port}", process, log)
    return _wait(running, lambda: _classify_works(running.target, "noop"), 60)


def start_naive(store: Path, data: Path, model: str, logs: Path) -> Running:
    port = free_port()
    process, log = _spawn("naive", [sys.executable, "-m", "tlserve.bench.naive_server", "--port", str(port),
                                   "--store", str(store), "--data", str(data)], logs,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    running = Running("naive", f"127.0.0.1:{port}", process, log)
    return _wait(running, lambda: _classify_works(running.target, model), 300)


def ensure_mlserver_venv() -> Path:
    """MLServer 1.7.1 + onnxruntime at pinned versions, and tlserve itself without dependencies."""
    python = MLSERVER_VENV / "bin" / "python"
    pins = MLSERVER_PINS.read_text()
    stamp = MLSERVER_VENV / "pins.txt"
    if not (stamp.exists() and stamp.read_text() == pins and python.exists()):
        _LOGGER.warning("building %s (MLServer 1.7.1; first run only)", MLSERVER_VENV)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                        str(MLSERVER_PINS)], check=True)
        stamp.write_text(pins)
    # tlserve's own code changes between runs: reinstall it (no dependencies, seconds).
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--force-reinstall", str(ROOT)], check=True, capture_output=True)
    return python


def start_mlserver(bundle: Path, model: str, workdir: Path, logs: Path, max_batch_size: int = 64,
                   max_batch_time: float = 0.0005) -> Running:
    python = ensure_mlserver_venv()
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    folder = workdir / "mlserver"
    model_folder = folder / model
    model_folder.mkdir(parents=True, exist_ok=True)
    (model_folder / "tlserve_mlserver_runtime.py").write_text(
        (Path(__file__).resolve().parent / "mlserver_runtime.py").read_text())
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        # Its worker pool crashes under uvloop 0.23 here; inference runs in the main process.
        "parallel_workers": 0, "debug": False,
    }))
    (model_folder / "model-settings.json").write_text(json.dumps({
        "name": model, "implementation": "tlserve_mlserver_runtime.TlserveRuntime",
        "parameters": {"uri": str(bundle)},
        "max_batch_size": max_batch_size, "max_batch_time": max_batch_time,
    }))
    process, log = _spawn("mlserver", [str(python), "-m", "mlserver.cli.main", "start", str(folder)], logs,
                          # Not from the checkout, whose tlserve/ folder would shadow the installed package.
                          env={"PYTHONPATH": str(model_folder)}, cwd=folder)
    running = Running("mlserver", f"127.0.0.1:{grpc_port}", process, log, http_port=http_port)

    def ready() -> bool:
        import grpc

        from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
        from tlserve.contract.oip import grpc_predict_v2_pb2_grpc as v2_grpc

        with grpc.insecure_channel(running.target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            return bool(stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=2).ready)

    return _wait(running, ready, 180)


def compute_ceiling(bundle: Path, texts: list[str], batch: int, seconds: float) -> dict[str, float]:
    """tlserve's preprocessing + onnxruntime in this process, no RPC: texts/s and time per call."""
    from tlserve.core.scorer import Scorer

    runtime = Scorer.open(bundle)
    runtime.warm_up("warm up")
    times, done, start = [], 0, time.perf_counter()
    rng = np.random.default_rng(0)
    while time.perf_counter() - start < seconds:
        first = int(rng.integers(0, len(texts) - batch))
        began = time.perf_counter()
        runtime.predict(texts[first : first + batch])
        times.append(time.perf_counter() - began)
        done += batch
    elapsed = time.perf_counter() - start
    return {"texts_per_s": round(done / elapsed, 1), "p50_ms": round(statistics.median(times) * 1000, 4),
            "texts_per_call": batch}


def fasttext_speed(train: list[tuple[str, str]], texts: list[str], seconds: float, workdir: Path
                   ) -> dict[str, float]:
    """fastText supervised (dim 50, bigrams) trained on the same texts, `predict` one text at a time."""
    import fasttext

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "fasttext-train.txt"
    path.write_text("".join(f"__label__{label.replace(' ', '_')} {text.lower()}\n".replace("\r", " ")
                            for text, label in train), encoding="utf-8")
    # Twelve threads, fastText's command-line default: with fewer than ten, fastText 0.9.3
    # leaves part of its input matrix uninitialised.
    model = fasttext.train_supervised(str(path), dim=50, wordNgrams=2, epoch=5, thread=12, verbose=0, seed=1)
    cleaned = [t.replace("\n", " ") for t in texts]
    times, done, start, i = [], 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        # The binding under model.predict() (which fails under NumPy 2 in fasttext 0.9.3):
        # every label with its probability for one text, as tlserve answers.
        model.f.predict(cleaned[i % len(cleaned)], -1, 0.0, "strict")
        times.append(time.perf_counter() - began)
        done += 1
        i += 1
    elapsed = time.perf_counter() - start
    return {"texts_per_s": round(done / elapsed, 1), "p50_ms": round(statistics.median(times) * 1000, 4),
            "texts_per_call": 1}


def cold_start(repository: Path, runs: int, logs: Path) -> list[float]:
    """Seconds from `tlserve serve` process start to health SERVING (health polled every 50 ms)."""
    from tlserve.client import Classifier

    seconds = []
    for i in range(runs):
        port = free_port()
        began = time.perf_counter()
        process, _ = _spawn(f"cold-{i}", tlserve_serve_command(repository, port), logs)
        try:
            with Classifier(f"127.0.0.1:{port}", timeout=2) as client:
                status = client.wait_until_serving(120)
            if status != "SERVING":
                raise RuntimeError(f"cold start {i}: health said {status}")
            seconds.append(round(time.perf_counter() - began, 3))
        finally:
            process.terminate()
            process.wait(30)
    return seconds


def shown(path: Path) -> str:
    """`path` as a results file records it: relative to the checkout when inside it (results describe the
    run, not this machine's folders)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def scrape(metrics_port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        return str(response.read().decode())


Timings = dict[str, tuple[float, float]]
"""(sum, count) of a tlserve server's timings and sizes, by name: a stage ("encode", "inference",
"respond"), "queue", "batch_size", or "call:<method>" (e.g. "call:Classify", "call:http:ModelInfer")."""


def timings(metrics_text: str, model: str) -> Timings:
    """The server's timings for `model`, from a scrape of its metrics (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {"tlserve_queue_seconds": "queue", "tlserve_batch_size": "batch_size"}
    out: Timings = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if family.name == "tlserve_stage_seconds":
                key = sample.labels["stage"]
            elif family.name == "tlserve_request_seconds":
                key = f"call:{sample.labels['method']}"
            elif family.name in names:
                key = names[family.name]
            else:
                continue
            total, count = out.get(key, (0.0, 0.0))
            if sample.name.endswith("_sum"):
                out[key] = (total + sample.value, count)
            elif sample.name.endswith("_count"):
                out[key] = (total, count + sample.value)
    return out


def mean_between(before: Timings, after: Timings, key: str) -> tuple[float, float]:
    """(mean, count) of `key` over what happened between two readings; (0, 0) if nothing did."""
    total, count = after.get(key, (0.0, 0.0))
    then_total, then_count = before.get(key, (0.0, 0.0))
    if count <= then_count:
        return 0.0, 0.0
    return (total - then_total) / (count - then_count), count - then_count
