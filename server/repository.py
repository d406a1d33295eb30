"""The model repository as the server sees it: every model, every version, stores mapped once.

Frozen models name their vector store by fingerprint; the store is opened (memory-mapped)
once per process however many models use it, and the page cache shares its pages with
every other worker process. Finetune models carry their own small store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from tlserve.bundle import Bundle, check_model_name, model_names, versions_of
from tlserve.errors import BundleError
from tlserve.server.runtime import ModelRuntime
from tlserve.vector_store import VectorStore

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


class ModelNotFound(LookupError):
    """No such model, or no such version of it."""


@dataclass
class ModelRepository:
    """Loaded models by name and version."""

    root: Path
    options: ort.SessionOptions
    models: dict[str, dict[int, ModelRuntime]] = field(default_factory=dict)
    stores: dict[str, VectorStore] = field(default_factory=dict)
    version_policy: str = "all"

    def _open(self, key: str, path: Path, fingerprint: str) -> VectorStore:
        if key not in self.stores:
            store = VectorStore(path)
            if store.fingerprint != fingerprint:
                raise BundleError(f"{path}: store fingerprint {store.fingerprint[:12]} is not the bundle's "
                                  f"{fingerprint[:12]}")
            self.stores[key] = store
        return self.stores[key]

    def store_for(self, bundle: Bundle) -> VectorStore:
        """The store of the version's token vocabulary: its own (finetune) or the shared one."""
        if bundle.features.mode == "finetune":
            return self._open(str(bundle.path), bundle.store_path(self.root), bundle.store_fingerprint)
        return self.shared_store_for(bundle)  # type: ignore[return-value]

    def shared_store_for(self, bundle: Bundle) -> VectorStore | None:
        """The shared store the version pools from, opened once per fingerprint."""
        fingerprint, path = bundle.shared_store_fingerprint, bundle.shared_store_path(self.root)
        if fingerprint is None or path is None:
            return None
        return self._open(fingerprint, path, fingerprint)

    def desired(self) -> dict[str, list[int]]:
        """The complete versions on disk that the version policy asks to serve, by model."""
        if not self.root.is_dir():
            raise BundleError(f"{self.root}: model repository not found")
        wanted: dict[str, list[int]] = {}
        for name in model_names(self.root):
            versions = select_versions(versions_of(self.root / name), self.version_policy)
            if versions:
                wanted[name] = versions
        return wanted

    def add(self, runtime: ModelRuntime) -> None:
        self.models.setdefault(runtime.name, {})[runtime.version] = runtime

    def remove(self, name: str, version: int) -> None:
        versions = self.models.get(name, {})
        versions.pop(version, None)
        if not versions:
            self.models.pop(name, None)

    def load(self, path: Path) -> ModelRuntime:
        bundle = Bundle.open(path, verify=True)
        if bundle.path.name != str(bundle.version) or bundle.path.parent.name != bundle.name:
            raise BundleError(f"{path}: manifest says {bundle.name}/{bundle.version}")
        return ModelRuntime(bundle, self.store_for(bundle), self.shared_store_for(bundle), self.options)

    def get(self, name: str, version: int = 0) -> ModelRuntime:
        """The runtime of `name` at `version` (0: the newest)."""
        try:
            check_model_name(name)
        except ValueError as exc:
            raise ModelNotFound(str(exc)) from None
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not served; served: {sorted(self.models) or 'none'}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version}; served versions: {sorted(versions)}")
        return versions[version]

    def versions(self, name: str) -> list[int]:
        return sorted(self.models.get(name, {}), reverse=True)

    def __iter__(self) -> Iterator[ModelRuntime]:
        for name in sorted(self.models):
            yield self.get(name)
