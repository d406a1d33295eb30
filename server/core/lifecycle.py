"""Model lifecycle: scan the repository, load, verify and warm new versions, swap them in, unload.

Every model and version under the repository root is served according to the version
policy. Vector stores are memory-mapped once per fingerprint (`tlserve.core.scorer.StoreCache`)
and shared by every model and, through the page cache, every worker process; a finetune
model adds only the rows its training changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlserve.core.bundle import MANIFEST, incomplete_versions, model_names, remove_stale_staging, versions_of
from tlserve.core.errors import BundleError
from tlserve.core.scorer import Scorer, StoreCache, session_options
from tlserve.core.snapshots import Snapshots
from tlserve.server.core import metrics
from tlserve.server.core.batching import DynamicBatcher
from tlserve.server.core.limits import RequestLimits
from tlserve.server.core.routing import RoutingTable, ServedVersion
from tlserve.server.settings import MODEL_SETTINGS_FILE, BatchingSettings, ServerSettings

_LOGGER = logging.getLogger(__name__)


def select_versions(available: list[int], policy: str) -> list[int]:
    """Versions to serve under `policy`: "all", "latest", "latest:N" or "specific:1,3"."""
    if policy == "all":
        return list(available)
    if policy == "latest" or policy.startswith("latest:"):
        count = int(policy.partition(":")[2] or 1)
        return sorted(available)[-count:] if count > 0 else []
    if policy.startswith("specific:"):
        pinned = {int(v) for v in policy.partition(":")[2].split(",") if v.strip()}
        return [v for v in available if v in pinned]
    raise ValueError(f"version policy {policy!r}: use all, latest, latest:N or specific:V1,V2")


@dataclass
class ReloadResult:
    """What one pass over the repository changed."""

    loaded: list[dict[str, Any]] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    """Versions that stopped serving: their store's files in the repository changed."""
    released: list[str] = field(default_factory=list)
    """Held versions serving again: their store's files match again."""

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.unloaded or self.held or self.released)


def _stamp(path: Path) -> tuple[float, float]:
    """When the version's manifest and its model's settings last changed: a refused version is tried again then."""
    times = []
    for file in (path / MANIFEST, path.parent / MODEL_SETTINGS_FILE):
        try:
            times.append(file.stat().st_mtime)
        except OSError:
            times.append(-1.0)
    return times[0], times[1]


class ModelLifecycle:
    """Keeps the routing table in line with the repository folder."""

    def __init__(self, settings: ServerSettings, table: RoutingTable, snapshots: Snapshots | None = None) -> None:
        self.root = settings.repository
        self.settings = settings
        self.table = table
        self.limits = RequestLimits(settings.max_texts_per_request, settings.max_text_bytes)
        self.stores = StoreCache(snapshots=snapshots)
        self.options = session_options(settings.intra_op_threads, settings.inter_op_threads,
                                       settings.allow_spinning)
        self._lock = asyncio.Lock()
        self._refused: dict[tuple[str, int], tuple[float, float]] = {}
        self._reported: set[Path] = set()

    def desired(self) -> dict[str, list[int]]:
        """The complete versions on disk that the version policy asks to serve, by model."""
        if not self.root.is_dir():
            raise BundleError(f"{self.root}: model repository not found")
        self._report_debris()
        wanted: dict[str, list[int]] = {}
        for name in model_names(self.root):
            versions = select_versions(versions_of(self.root / name), self.settings.version_policy)
            if versions:
                wanted[name] = versions
        return wanted

    def _report_debris(self) -> None:
        """Staging folders whose writer is gone are removed (when the repository is writable);
        the rest, and numbered folders without a manifest, are logged once each."""
        removed, left = remove_stale_staging(self.root)
        for folder in removed:
            _LOGGER.warning("removed %s: a staging folder whose writer is gone (a killed `tlserve train`)", folder)
        for folder in left:
            if folder not in self._reported:
                self._reported.add(folder)
                _LOGGER.warning("staging folder %s: its writer is gone or on another host; not removed here "
                                "(read-only repository, or another host's)", folder)
        for name in model_names(self.root):
            for folder in incomplete_versions(self.root / name):
                if folder not in self._reported:
                    self._reported.add(folder)
                    _LOGGER.warning("%s has no %s: not a version, not served", folder, MANIFEST)

    async def reload(self) -> ReloadResult:
        """Brings the served versions in line with the repository, never dropping a call.

        New versions are loaded, verified against their manifest (sha256 of every file, the
        store's fingerprint) and the graph against the bundle, and warmed with real answers
        in a thread, and only then swapped in. Versions gone from disk (or from the policy)
        are taken out of routing first, then their batchers finish the calls already queued.
        A bad version is refused once (log line and metric) until its manifest changes;
        what already serves keeps serving.
        """
        async with self._lock:
            result = ReloadResult()
            desired = await asyncio.to_thread(self.desired)
            for name, versions in desired.items():
                for version in versions:
                    if name in self.table.models and version in self.table.models[name]:
                        continue
                    path = self.root / name / str(version)
                    stamp = _stamp(path)
                    if self._refused.get((name, version)) == stamp:
                        continue
                    try:
                        batching = self.batching_of(name)
                        scorer = await asyncio.to_thread(self._load_and_warm, path)
                    except Exception as exc:  # any bad bundle (or model settings): refuse it, keep serving the rest
                        self._refused[(name, version)] = stamp
                        metrics.LOAD_FAILURES.labels(type(exc).__name__).inc()
                        _LOGGER.error("refused %s: %s", path, exc)
                        result.refused.append(f"{path}: {exc}")
                        continue
                    batcher = DynamicBatcher(scorer, batching, self.limits)
                    batcher.start()
                    self.table.add(ServedVersion(scorer, batcher))  # from here on, calls can reach it
                    result.loaded.append(scorer.describe())
                    metrics.ENCODER.labels(scorer.name, str(scorer.version), scorer.featurizer.encoder).set(1)
                    _LOGGER.info("serving %s", scorer.describe())
            for served in list(self.table.all_versions()):
                if served.version in desired.get(served.name, ()):
                    continue
                self.table.remove(served.name, served.version)  # no new call reaches it...
                await served.batcher.close()  # ...and the calls already queued finish
                result.unloaded.append(f"{served.name}/{served.version}")
                metrics.ENCODER.remove(served.name, str(served.version), served.scorer.featurizer.encoder)
                _LOGGER.info("unloaded %s/%d", served.name, served.version)
            self._hold_broken(await asyncio.to_thread(self.stores.check), result)
            metrics.MODELS_LOADED.set(sum(1 for _ in self.table.all_versions()))
            return result

    def _hold_broken(self, problems: dict[str, str | None], result: ReloadResult) -> None:
        """Takes the versions whose store's files in the repository no longer match out of service (and puts
        them back once they match again): they would not load after a restart, and whoever changed the
        files should know now, not then. The server itself still reads the verified copy, so nothing
        crashes and no answer is wrong meanwhile."""
        for fingerprint, problem in problems.items():
            metrics.STORE_BROKEN.labels(fingerprint[:12]).set(1 if problem else 0)
        for served in self.table.all_versions():
            problem = problems.get(served.scorer.bundle.store_fingerprint)
            held = None if problem is None else f"its vector store changed in the repository: {problem}"
            if held == served.held:
                continue
            label = f"{served.name}/{served.version}"
            if held is None:
                _LOGGER.info("%s serves again: its vector store's files match their fingerprint again", label)
                result.released.append(label)
            else:
                _LOGGER.error("%s is NOT_SERVING (calls get UNAVAILABLE) until its store's files match again; the "
                              "server keeps running on its verified copy: %s", label, problem)
                result.held.append(label)
            served.held = held

    def batching_of(self, name: str) -> BatchingSettings:
        """The server's batching settings, with those of the model's own `serving.json` (if it has one)."""
        path = self.root / name / MODEL_SETTINGS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self.settings.batching()
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not readable JSON: {exc}") from None
        return self.settings.batching().overridden(data, path)

    def _load_and_warm(self, path: Path) -> Scorer:
        scorer = Scorer.open(path, self.root, self.stores, self.options)
        scorer.warm_up(self.settings.warmup_text)
        return scorer

    async def close(self) -> None:
        """Finishes the calls queued on every served version."""
        await asyncio.gather(*(served.batcher.close() for served in self.table.all_versions()))
