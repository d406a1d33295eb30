"""The model bundle and the model repository, shared by the trainer (writer) and the server (reader).

A repository is a folder of models, each a folder of integer versions (as in TF Serving
and Triton)::

    <repository>/
      _stores/<fingerprint>/          shared vector stores (see tlserve.vector_store)
      <model>/<version>/
        model.onnx                    the graph: features -> probabilities, or token ids -> probabilities
        labels.json                   output order of the labels
        preprocessing.json            tlserve.preprocessing.PreprocessingConfig
        sif_weights.npy               (frozen + SIF) one weight per store row
        store/                        (finetune) the model's own vocabulary and adapted table
        report.json, report.md, *.png the training report
        manifest.json                 sha256 of every file above, the store fingerprint,
                                      feature config, ONNX parity, metrics, versions

A version is written into a hidden staging folder next to its final place and renamed
into place in one step, so a server watching the repository never sees half a bundle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlserve.errors import BundleError
from tlserve.features import FeatureConfig
from tlserve.preprocessing import PreprocessingConfig
from tlserve.vector_store import MANIFEST, sha256_file

BUNDLE_FORMAT = 1
STORES_DIR = "_stores"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
SIF_FILE = "sif_weights.npy"
OWN_STORE_DIR = "store"
# Letters, digits, '_', '-', '.', not starting with '.' or '_': no path traversal, no
# hidden staging folders, no clash with _stores.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str) -> str:
    """Returns `name` if it is a valid model name, else raises ValueError saying why."""
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..'"
        )
    return name


def versions_of(model_dir: Path) -> list[int]:
    """The complete versions of a model folder, ascending (staging folders are ignored)."""
    if not model_dir.is_dir():
        return []
    found = []
    for child in model_dir.iterdir():
        if child.name.isdigit() and child.name == str(int(child.name)) and (child / MANIFEST).is_file():
            found.append(int(child.name))
    return sorted(found)


def model_names(repository: Path) -> list[str]:
    if not repository.is_dir():
        return []
    names = []
    for child in sorted(repository.iterdir()):
        if child.is_dir() and _MODEL_NAME.fullmatch(child.name) and ".." not in child.name:
            names.append(child.name)
    return names


@dataclass
class Bundle:
    """An opened model version: its folder and its parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["model"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def preprocessing(self) -> PreprocessingConfig:
        return PreprocessingConfig.from_dict(self.manifest["preprocessing"])

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.manifest["features"])

    @property
    def store_fingerprint(self) -> str:
        return str(self.manifest["vector_store"]["fingerprint"])

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def shared_store_fingerprint(self) -> str | None:
        """Fingerprint of the shared store this version pools from (frozen, or finetune + static)."""
        if self.features.mode == "frozen":
            return self.store_fingerprint
        if self.features.static:
            return str(self.manifest["vector_store"]["base_fingerprint"])
        return None

    def store_path(self, repository: Path) -> Path:
        """Folder of the vocabulary this version's token ids refer to: its own, or the shared store."""
        if self.features.mode == "finetune":
            return self.path / OWN_STORE_DIR
        return repository / STORES_DIR / self.store_fingerprint

    def shared_store_path(self, repository: Path) -> Path | None:
        fingerprint = self.shared_store_fingerprint
        return None if fingerprint is None else repository / STORES_DIR / fingerprint

    @classmethod
    def open(cls, path: Path, verify: bool = True) -> Bundle:
        """Reads a version folder; with `verify`, checks every file against its sha256."""
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(f"{path}: not a model version (no {MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise BundleError(f"{manifest_path}: unreadable manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{manifest_path}: bundle format {manifest.get('format')!r} is not {BUNDLE_FORMAT}")
        for key in ("model", "version", "labels", "preprocessing", "features", "vector_store", "files"):
            if key not in manifest:
                raise BundleError(f"{manifest_path}: manifest lacks field {key!r}")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        for relative, expected in self.manifest["files"].items():
            file = self.path / relative
            if not file.resolve().is_relative_to(self.path.resolve()):
                raise BundleError(f"{self.path / MANIFEST}: file {relative!r} lies outside the bundle")
            if not file.is_file():
                raise BundleError(f"{file}: listed in the manifest but missing")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(f"{file}: sha256 {actual[:12]} does not match the manifest's {expected[:12]}")


def _files_of(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


def publish_version(staging: Path, model_dir: Path, manifest: dict[str, Any]) -> Path:
    """Hashes the files of `staging`, writes the manifest, renames it to the next version.

    `manifest["version"]` is set here: the next integer after the existing versions;
    a concurrent writer that takes the same number makes the rename fail and we retry.
    """
    manifest = dict(manifest)
    manifest["format"] = BUNDLE_FORMAT
    manifest["files"] = {str(p.relative_to(staging)): sha256_file(p) for p in _files_of(staging)}
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; servers may run as another user
    for _ in range(100):
        version = max(versions_of(model_dir), default=0) + 1
        manifest["version"] = version
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        target = model_dir / str(version)
        try:
            os.rename(staging, target)  # atomic; fails if another writer took this version
        except OSError:
            if target.exists():
                continue
            raise
        return target
    raise BundleError(f"{model_dir}: could not claim a new version number")


def staging_folder(model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
