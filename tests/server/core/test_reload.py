"""Hot reload under load: new, corrupt and removed versions while calls keep flowing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from tlserve.client import Classifier

from conftest import ServerProcess, Trained, call_until, start_server


def publish(source: Path, model_dir: Path, version: int, corrupt: bool = False) -> None:
    """Writes a version the way the trainer does: staging folder, then one rename."""
    staging = model_dir / f".staging-{version}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(model=model_dir.name, version=version)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    if corrupt:
        with open(staging / "labels.json", "a") as handle:
            handle.write("\n")  # no longer matches its sha256 in the manifest
    os.rename(staging, model_dir / str(version))


def retire(model_dir: Path, version: int) -> None:
    hidden = model_dir / f".removed-{version}"
    os.rename(model_dir / str(version), hidden)
    shutil.rmtree(hidden)


def refused_total(server: ServerProcess) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("tlserve_model_load_failures_total"))


def versions_served(server: ServerProcess) -> list[int]:
    with Classifier(server.target) as client:
        return list(client.model("hot").versions)


def wait_for(condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_five_reloads_under_load_lose_no_call(trained: Trained, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(trained.repository / "_stores", repository / "_stores")
    model_dir = repository / "hot"
    model_dir.mkdir()
    source = trained.frozen.path
    publish(source, model_dir, 1)
    server = start_server(repository, tmp_path / "server.log", "--poll-seconds", "0.2")
    answers: list[int] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def reloads() -> None:
        def step(action, expected: list[int]) -> None:  # type: ignore[no-untyped-def]
            # Under load: each change lands while callers are answered, and each step waits
            # for 20 more answers after it, so the callers cross every change.
            answered = len(answers)
            action()
            wait_for(lambda: versions_served(server) == expected and len(answers) >= answered + 20)

        await asyncio.to_thread(step, lambda: publish(source, model_dir, 2), [2, 1])
        await asyncio.to_thread(step, lambda: publish(source, model_dir, 3), [3, 2, 1])
        await asyncio.to_thread(publish, source, model_dir, 4, True)
        await asyncio.to_thread(wait_for, lambda: refused_total(server) == 1)
        await asyncio.to_thread(step, lambda: publish(source, model_dir, 5), [5, 3, 2, 1])
        await asyncio.to_thread(step, lambda: retire(model_dir, 1), [5, 3, 2])
        stop.set()

    async def run() -> None:
        await asyncio.gather(reloads(), call_until(stop, server.target, "hot", answers, failures))

    try:
        asyncio.run(run())
        assert failures == []
        assert set(answers) <= {1, 2, 3, 5} and 4 not in answers
        assert answers[-1] == 5
        assert refused_total(server) == 1  # refused once, not at every poll
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0
    log = server.output()
    assert "refused" in log and "labels.json" in log and "unloaded hot/1" in log


def test_version_policy_latest_and_sighup_reload(trained: Trained, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(trained.repository / "_stores", repository / "_stores")
    model_dir = repository / "hot"
    model_dir.mkdir()
    publish(trained.frozen.path, model_dir, 1)
    publish(trained.frozen.path, model_dir, 2)
    server = start_server(repository, tmp_path / "server.log", "--poll-seconds", "0", "--version-policy", "latest")
    try:
        assert versions_served(server) == [2]
        publish(trained.frozen.path, model_dir, 3)
        assert versions_served(server) == [2]  # no polling (see the test below): nothing changes...
        server.process.send_signal(1)  # ...until SIGHUP
        wait_for(lambda: versions_served(server) == [3])
    finally:
        assert server.stop() == 0


def test_bundle_for_a_missing_store_is_refused_and_the_rest_serves(trained: Trained, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(trained.repository / "_stores", repository / "_stores")
    (repository / "hot").mkdir()
    publish(trained.frozen.path, repository / "hot", 1)
    (repository / "orphan").mkdir()
    publish(trained.frozen.path, repository / "orphan", 1)
    manifest_path = repository / "orphan" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["vector_store"]["fingerprint"] = "0" * 64  # a store this repository does not have
    manifest_path.write_text(json.dumps(manifest))
    server = start_server(repository, tmp_path / "server.log")
    try:
        assert versions_served(server) == [1]
        assert refused_total(server) == 1
        with Classifier(server.target) as client:
            assert {info.name for info in client.models()} == {"hot"}
    finally:
        assert server.stop() == 0
    assert "refused" in server.output() and "0000000000" in server.output()


def test_without_polling_the_repository_is_scanned_only_when_asked() -> None:
    """--poll-seconds 0: the watcher waits for a reload request with no time limit, so no scan ever starts on
    its own; each request makes exactly one scan."""
    import asyncio
    from types import SimpleNamespace

    from tlserve.server import assembly
    from tlserve.server.settings import ServerSettings

    timeouts: list[float | None] = []
    scans: list[int] = []
    real_wait_for = asyncio.wait_for

    async def recording_wait_for(awaitable: Any, timeout: float | None) -> Any:
        timeouts.append(timeout)
        return await real_wait_for(awaitable, timeout)

    async def reload() -> Any:
        scans.append(1)
        return SimpleNamespace(changed=False)

    async def main() -> None:
        stand_in = SimpleNamespace(settings=ServerSettings(poll_seconds=0), lifecycle=SimpleNamespace(reload=reload))
        requested = asyncio.Event()
        watcher = asyncio.ensure_future(assembly.Server.watch(stand_in, requested))  # type: ignore[arg-type]
        while not timeouts:
            await asyncio.sleep(0)
        assert timeouts == [None] and scans == []  # waiting on the request alone
        requested.set()
        while len(timeouts) < 2:
            await asyncio.sleep(0)
        assert scans == [1] and timeouts == [None, None]
        watcher.cancel()

    original = assembly.asyncio.wait_for
    assembly.asyncio.wait_for = recording_wait_for  # type: ignore[assignment]
    try:
        asyncio.run(main())
    finally:
        assembly.asyncio.wait_for = original  # type: ignore[assignment]
