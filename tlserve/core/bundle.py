"""The model bundle and the model repository, shared by the trainer (writer) and the server (reader).

This module owns the bundle's files: `BundleWriter` writes every one of them, `Bundle` reads
them (as fastText's model owns its file through save_model and load_model). A repository is a
folder of models, each a folder of integer versions (as in TF Serving and Triton)::

    <repository>/
      _stores/<fingerprint>/          shared vector stores (see tlserve.core.vector_store)
      <model>/<version>/
        model.onnx                    the graph: features (or token ids) -> probabilities
        labels.json                   output order of the labels
        preprocessing.json            tlserve.core.preprocessing.PreprocessingConfig
        sif_weights.npy               (frozen + SIF) one weight per store row
        lexicon.txt, lexicon_idf.npy  (lexical channel) its n-grams and their IDF (tlserve.core.lexicon)
        trained_rows.npy,             (finetune) the shared-store rows and hashed rows the graph's
          trained_buckets.npy         table holds (tlserve.core.features.TrainedRows)
        report.json, report.md, *.png the training report
        manifest.json                 sha256 of every file above, the store fingerprint,
                                      feature config, ONNX parity, metrics, versions

A version is written into a hidden staging folder next to its final place and renamed
into place in one step, so a server watching the repository never sees half a bundle. The
staging folder's name carries the writer's host and process id
(``.staging-<host>-<pid>-<random>``), so a folder left by a writer that was killed can be
told from one still being written, and removed (`stale_staging`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.errors import BundleError
from tlserve.core.features import FeatureConfig, TrainedRows
from tlserve.core.lexicon import Lexicon
from tlserve.core.manifests import MANIFEST, read_manifest
from tlserve.core.preprocessing import PreprocessingConfig
from tlserve.core.processes import writer_is_gone
from tlserve.core.vector_store import StoreManifest, sha256_file

BUNDLE_FORMAT = 2
# Format 1 differs only for finetune models, which carried a copy of their vocabulary and table;
# its frozen models read as they did.
_FROZEN_ONLY_FORMATS = (1,)
STORES_DIR = "_stores"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"
PREPROCESSING_FILE = "preprocessing.json"
SIF_FILE = "sif_weights.npy"
LEXICON_FILE = "lexicon.txt"
LEXICON_IDF_FILE = "lexicon_idf.npy"
TRAINED_ROWS_FILE = "trained_rows.npy"
TRAINED_BUCKETS_FILE = "trained_buckets.npy"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_FIGURE = "confusion.png"
CURVES_FIGURE = "training_curves.png"
LEARNING_CURVE_FIGURE = "learning_curve.png"
RELIABILITY_FIGURE = "reliability.png"
REPORT_FIGURES = (CONFUSION_FIGURE, CURVES_FIGURE, LEARNING_CURVE_FIGURE, RELIABILITY_FIGURE)
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


STAGING_PREFIX = ".staging-"


def _numbered(model_dir: Path) -> list[Path]:
    """Every folder of `model_dir` named as a version number (complete or not)."""
    if not model_dir.is_dir():
        return []
    return [child for child in model_dir.iterdir()
            if child.name.isdigit() and child.name == str(int(child.name)) and child.is_dir()]


def incomplete_versions(model_dir: Path) -> list[Path]:
    """Numbered folders without a manifest: not versions, but their numbers are taken."""
    return sorted((child for child in _numbered(model_dir) if not (child / MANIFEST).is_file()),
                  key=lambda child: int(child.name))


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


@dataclass(frozen=True)
class StoreRef:
    """The vector store a version was trained on, as its manifest records it."""

    fingerprint: str
    """Fingerprint of the shared store (under ``_stores/``) the version reads."""
    size: int
    """Words in that store."""
    dimension: int
    """Vector length."""
    case: str
    """Case policy of its vocabulary."""
    source_name: str
    """File the vectors were imported from."""
    source_sha256: str
    """sha256 of that file."""
    created_at: str
    """When the store was written."""
    format: int
    """Store format version."""
    shared: bool
    """True: the store is shared under ``_stores/`` (format 1 finetune models had their own)."""
    base_fingerprint: str | None = None
    """Format 1 finetune models only: the shared store their own store was adapted from."""

    @classmethod
    def of(cls, store: StoreManifest) -> StoreRef:
        """The record of a shared store."""
        return cls(format=store.format, dimension=store.dimension, size=store.size, case=store.case,
                   source_name=store.source_name, source_sha256=store.source_sha256,
                   fingerprint=store.fingerprint, created_at=store.created_at, shared=True)


@dataclass(frozen=True)
class OnnxInfo:
    """The exported graph."""

    file: str
    """File name of the graph inside the version folder."""
    opset: int
    """ONNX opset it was exported with."""
    inputs: dict[str, str]
    """dtype of each graph input, by name."""
    output: str
    """Name of the probabilities output."""


@dataclass(frozen=True)
class ParityRecord:
    """Keras against onnxruntime on the test split, checked before the bundle was written."""

    examples: int
    """Inputs compared."""
    max_abs_diff: float
    """Largest absolute difference of a probability."""
    argmax_agreement: float
    """Share of inputs with the same most probable label."""
    tolerance: float
    """Largest difference accepted."""
    ok: bool
    """Both within limits (a bundle is only written when true)."""


@dataclass(frozen=True)
class TrainingDataRecord:
    """What the version was trained on."""

    fingerprint: str
    """sha256 over the texts and labels of every split."""
    source: str
    """The labelled file given to `tlserve train`."""
    examples: dict[str, int]
    """Examples per split: train, validation, test."""
    class_counts: dict[str, int]
    """Training examples per label."""
    skipped_empty: int
    """Rows skipped because their text was empty."""
    seed: int
    """Seed of the splits and of training."""
    train_fraction: float
    """Share of the training labels used."""
    truncated_texts: int = 0
    """Training texts longer than the token cap (``preprocessing.max_tokens``), cut to its first tokens."""


@dataclass(frozen=True)
class BundleManifest:
    """What ``manifest.json`` of a model version records: the one schema every reader goes through."""

    model: str
    """Model name (the folder above the version)."""
    version: int
    """Version number (the version folder's name)."""
    mode: str
    """Transfer mode: "frozen" or "finetune"."""
    created_at: str
    """When the version was trained, RFC 3339 UTC."""
    labels: list[str]
    """Output order of the labels."""
    preprocessing: PreprocessingConfig
    """How texts become tokens."""
    features: FeatureConfig
    """How tokens become graph inputs."""
    vector_store: StoreRef
    """The store the version refers to."""
    onnx: OnnxInfo
    """The exported graph."""
    parity: ParityRecord
    """The ONNX parity check."""
    metrics: dict[str, float]
    """Headline test metrics (test_accuracy, test_macro_f1, test_oov_share, test_examples)."""
    training_data: TrainingDataRecord
    """The data it was trained on."""
    hyperparameters: dict[str, Any]
    """The training settings, as given and as chosen."""
    library_versions: dict[str, str]
    """Versions of Python and the libraries that trained and exported it."""
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of every other file of the version, by relative path (filled in when published)."""
    format: int = BUNDLE_FORMAT
    """Bundle format version; readers refuse formats they do not know."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocessing"] = asdict(self.preprocessing)
        data["features"] = self.features.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, where: Path) -> BundleManifest:
        """Parses a manifest; BundleError names the file and the field that is missing or wrong."""
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        if found != BUNDLE_FORMAT and found not in _FROZEN_ONLY_FORMATS:
            raise BundleError(f"{where}: bundle format {found!r} is not {BUNDLE_FORMAT}")
        if found in _FROZEN_ONLY_FORMATS and isinstance(data.get("features"), dict) \
                and data["features"].get("mode") != "frozen":
            raise BundleError(f"{where}: a finetune model of bundle format {found}, which carried its own copy of "
                              f"the vectors; this tlserve reads finetune models of format {BUNDLE_FORMAT} (only the "
                              "rows training changed): train the model again with `tlserve train`")
        try:
            missing = [name for name in cls.__dataclass_fields__ if name not in data]
            if missing:
                raise BundleError(f"{where}: manifest lacks field {missing[0]!r}")
            return cls(
                model=str(data["model"]), version=int(data["version"]), mode=str(data["mode"]),
                created_at=str(data["created_at"]), labels=[str(label) for label in data["labels"]],
                preprocessing=PreprocessingConfig.from_dict(data["preprocessing"]),
                features=FeatureConfig.from_dict(data["features"]),
                vector_store=_record(StoreRef, data["vector_store"]), onnx=_record(OnnxInfo, data["onnx"]),
                parity=_record(ParityRecord, data["parity"]), metrics=dict(data["metrics"]),
                training_data=_record(TrainingDataRecord, data["training_data"]),
                hyperparameters=dict(data["hyperparameters"]), library_versions=dict(data["library_versions"]),
                files=dict(data["files"]), format=int(data["format"]),
            )
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed manifest: {exc!r}") from None


def _record(kind: Any, data: Any) -> Any:
    names = {f.name for f in fields(kind)}
    if not isinstance(data, dict):
        raise TypeError(f"{kind.__name__} must be an object")
    return kind(**{k: v for k, v in data.items() if k in names})


@dataclass
class Bundle:
    """An opened model version: its folder and its parsed manifest (what readers ask for most, copied once)."""

    path: Path
    manifest: BundleManifest
    name: str = field(init=False)
    version: int = field(init=False)
    labels: list[str] = field(init=False)
    preprocessing: PreprocessingConfig = field(init=False)
    features: FeatureConfig = field(init=False)
    store_fingerprint: str = field(init=False)
    model_file: Path = field(init=False)
    sif_file: Path = field(init=False)

    def __post_init__(self) -> None:
        manifest = self.manifest
        self.name, self.version, self.labels = manifest.model, manifest.version, list(manifest.labels)
        self.preprocessing, self.features = manifest.preprocessing, manifest.features
        self.store_fingerprint = manifest.vector_store.fingerprint
        self.model_file, self.sif_file = self.path / MODEL_FILE, self.path / SIF_FILE

    def lexicon(self, keep_grams: bool = False) -> Lexicon:
        """The lexical channel's lexicon (its n-grams hashed for lookups; the strings only with `keep_grams`)."""
        path = self.path / LEXICON_FILE
        try:
            grams = path.read_text(encoding="utf-8").split("\n")[:-1]
            idf = np.load(self.path / LEXICON_IDF_FILE, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise BundleError(f"{path}: unreadable lexicon: {error}") from None
        if idf.ndim != 1 or len(idf) != len(grams):
            raise BundleError(f"{path}: {len(grams)} n-grams but {self.path / LEXICON_IDF_FILE} holds shape "
                              f"{list(idf.shape)}")
        try:
            return Lexicon(grams, idf, self.features.lexical_units, keep_grams=keep_grams)
        except ValueError as error:
            raise BundleError(f"{path}: {error}") from None

    def trained_rows(self, store_size: int) -> TrainedRows:
        """A finetuned version's trained rows, checked (sorted, unique, within the store and the buckets)."""
        arrays = []
        for name, limit in ((TRAINED_ROWS_FILE, store_size), (TRAINED_BUCKETS_FILE, self.features.buckets)):
            path = self.path / name
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise BundleError(f"{path}: unreadable: {error}") from None
            if array.ndim != 1 or array.dtype != np.int32:
                raise BundleError(f"{path}: {array.dtype} of shape {list(array.shape)}; expected int32 [rows]")
            if len(array) and (array[0] < 0 or array[-1] >= limit or np.any(np.diff(array) <= 0)):
                raise BundleError(f"{path}: rows must be sorted, unique and in [0, {limit})")
            arrays.append(array)
        return TrainedRows(arrays[0], arrays[1])

    def store_path(self, repository: Path) -> Path:
        """Folder of the shared store this version reads."""
        return repository / STORES_DIR / self.store_fingerprint

    @classmethod
    def open(cls, path: Path, verify: bool = True) -> Bundle:
        """Reads a version folder; with `verify`, checks every file against its sha256."""
        bundle = cls(path, BundleManifest.from_dict(read_manifest(path, "a model version"), path / MANIFEST))
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        for relative, expected in self.manifest.files.items():
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


class BundleWriter:
    """Writes one version of a model: every file of the bundle goes through it, into a hidden staging folder
    (named after its writer, see `stale_staging`) that `publish` renames into place; leaving the `with`
    block without publishing removes it.

        with BundleWriter(repository, "tickets") as writer:
            writer.graph(onnx_bytes)
            writer.labels(labels)
            ...
            path = writer.publish(manifest)
    """

    def __init__(self, repository: Path, model: str) -> None:
        check_model_name(model)
        self.model_dir = Path(repository) / model
        self.staging = staging_folder(self.model_dir)
        self.published: Path | None = None

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.published is None:
            discard(self.staging)

    @property
    def graph_path(self) -> Path:
        """Where the ONNX graph goes (an exporter writes it there itself)."""
        return self.staging / MODEL_FILE

    def file(self, name: str) -> Path:
        """Where a report file named `name` goes."""
        return self.staging / name

    def graph(self, data: bytes) -> None:
        self.graph_path.write_bytes(data)

    def labels(self, labels: list[str]) -> None:
        (self.staging / LABELS_FILE).write_text(json.dumps(labels, ensure_ascii=False, indent=1) + "\n",
                                                encoding="utf-8")

    def preprocessing(self, config: PreprocessingConfig) -> None:
        (self.staging / PREPROCESSING_FILE).write_text(config.to_json() + "\n", encoding="utf-8")

    def sif_weights(self, weights: np.ndarray) -> None:
        np.save(self.staging / SIF_FILE, np.asarray(weights, dtype=np.float32), allow_pickle=False)

    def lexicon(self, lexicon: Lexicon) -> None:
        if lexicon.grams is None:
            raise ValueError("a lexicon read for lookups only (its n-grams dropped) cannot be written")
        (self.staging / LEXICON_FILE).write_text("".join(f"{gram}\n" for gram in lexicon.grams), encoding="utf-8")
        np.save(self.staging / LEXICON_IDF_FILE, lexicon.idf, allow_pickle=False)

    def trained_rows(self, trained: TrainedRows) -> None:
        np.save(self.staging / TRAINED_ROWS_FILE, trained.store_rows.astype(np.int32), allow_pickle=False)
        np.save(self.staging / TRAINED_BUCKETS_FILE, trained.buckets.astype(np.int32), allow_pickle=False)

    def publish(self, manifest: BundleManifest) -> Path:
        """Hashes every file, writes the manifest and renames the folder to the next version number."""
        self.published = publish_version(self.staging, self.model_dir, manifest)
        return self.published


def publish_version(staging: Path, model_dir: Path, manifest: BundleManifest) -> Path:
    """Hashes the files of `staging`, writes the manifest, renames it to the next version.

    The manifest's version is set here: the next integer after the existing versions;
    a concurrent writer that takes the same number makes the rename fail and we retry.
    """
    files = {str(p.relative_to(staging)): sha256_file(p) for p in _files_of(staging)}
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; servers may run as another user
    for _ in range(100):
        # After every numbered folder, complete or not: a folder without a manifest (a copy
        # in progress, a hand-made one) must not block publishing.
        version = max((int(child.name) for child in _numbered(model_dir)), default=0) + 1
        record = replace(manifest, version=version, files=files, format=BUNDLE_FORMAT)
        (staging / MANIFEST).write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n",
                                        encoding="utf-8")
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
    """A new hidden folder in `model_dir` to write a version into, named after its writer."""
    model_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=model_dir))


def stale_staging(repository: Path) -> tuple[list[Path], list[Path]]:
    """Staging folders of the repository's models: (left by a writer of this host that is gone,
    left by another host or of unknown origin). A process id that now belongs to a process
    started after the folder was made is a writer that is gone, too."""
    gone: list[Path] = []
    unknown: list[Path] = []
    host = socket.gethostname()
    if not repository.is_dir():
        return gone, unknown
    for model_dir in repository.iterdir():
        if not model_dir.is_dir():
            continue
        for child in model_dir.glob(STAGING_PREFIX + "*"):
            writer_host, _, _random = child.name[len(STAGING_PREFIX):].rpartition("-")
            writer_host, _, pid_text = writer_host.rpartition("-")
            if writer_host != host or not pid_text.isdigit():
                unknown.append(child)
                continue
            if writer_is_gone(int(pid_text), child):
                gone.append(child)
    return sorted(gone), sorted(unknown)


def remove_stale_staging(repository: Path) -> tuple[list[Path], list[Path]]:
    """Removes the staging folders whose writer is gone; returns (removed, left alone)."""
    gone, unknown = stale_staging(repository)
    removed = []
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed, [folder for folder in gone if folder not in removed] + unknown


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
