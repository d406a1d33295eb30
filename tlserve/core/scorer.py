"""In-process scoring: a model version's texts -> probabilities, without any server.

`Scorer` is what the server runs inside every batch, and what offline scoring and
notebooks use directly: the bundle's own preprocessing and features (the same modules
the trainer used) and one onnxruntime session::

    from tlserve.core.scorer import Scorer

    scorer = Scorer.from_repository("models", "tickets")       # newest version
    prediction = scorer.predict(["my invoice is wrong", "reset my password"])
    prediction.probabilities                                    # float32 [2, len(scorer.labels)]

Vector stores are memory-mapped, and a `StoreCache` opens each one once however many
scorers use it. Opening a scorer checks the graph against the bundle (input names and
types for its mode, an output of one probability per label) and runs a warm-up answer
whose shape and values must be right, so a bad version fails here, before any traffic.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tlserve.core.bundle import (
    LEXICON_FILE,
    SIF_FILE,
    TRAINED_BUCKETS_FILE,
    TRAINED_ROWS_FILE,
    Bundle,
    versions_of,
)
from tlserve.core.errors import BundleError
from tlserve.core.features import (
    FINETUNE_INPUT,
    FIRST_TRAINED_ID,
    LEXICON_IDS_INPUT,
    LEXICON_WEIGHTS_INPUT,
    OUTPUT,
    Featurizer,
)
from tlserve.core.preprocessing import Preprocessor
from tlserve.core.snapshots import Snapshots
from tlserve.core.vector_store import (
    MANIFEST,
    VECTORS,
    VOCAB,
    StoreManifest,
    VectorStore,
    check_fingerprint,
    file_hashes,
)

_LOGGER = logging.getLogger(__name__)

# ONNX type strings of each graph input, by name.
_INPUT_TYPES = {FINETUNE_INPUT: "tensor(int64)", LEXICON_IDS_INPUT: "tensor(int64)"}
_DEFAULT_INPUT_TYPE = "tensor(float)"


class NonFiniteAnswer(BundleError):
    """The model answered NaN or infinity: a broken version, whose answer must never reach a caller."""


@dataclass
class Prediction:
    """Outputs for a batch of texts."""

    probabilities: np.ndarray
    """float32 [n, classes], columns in the order of the model's labels."""
    token_counts: np.ndarray
    """int32 [n]: tokens per text after preprocessing."""
    oov_fractions: np.ndarray
    """float32 [n]: share of each text's tokens not in the vocabulary."""
    encode_seconds: float
    """Time spent on preprocessing and features."""
    inference_seconds: float
    """Time spent in onnxruntime."""
    started: float = 0.0
    """time.perf_counter() when encoding started."""
    batch_spans: tuple[Any, ...] = ()
    """Trace contexts of the server batches that computed these rows (when the server traces)."""
    batches: tuple[Any, ...] = ()
    """What each server batch that computed these rows cost, given to the first call it answered (so each
    batch is counted once)."""


def session_options(intra_op_threads: int = 1, inter_op_threads: int = 1,
                    allow_spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Explicit thread counts: ORT's default (one per core) oversubscribes when several
    # workers share the machine.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No per-session memory arena: it keeps its largest batch's buffers for the session's life
    # (1 MB per loaded version after 16 texts, more after large batches), which a server holding
    # many models pays once per version; malloc costs nothing measurable at 1-64 texts.
    options.enable_cpu_mem_arena = False
    spin = "1" if allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def _signature(folder: Path) -> tuple[tuple[int, int, int], ...]:
    """What changes when a store's files are replaced, cut or written (inode, size, modification time)."""
    out = []
    for name in (VECTORS, VOCAB):
        try:
            info = os.stat(folder / name)
            out.append((info.st_ino, info.st_size, info.st_mtime_ns))
        except OSError:
            out.append((-1, -1, -1))
    return tuple(out)


@dataclass
class _Source:
    path: Path
    signature: tuple[tuple[int, int, int], ...]
    problem: str | None = None


@dataclass
class StoreCache:
    """Vector stores opened once each, by fingerprint, each verified against it when opened.

    With `snapshots` (a server), each store is read from a private copy made and verified when it is
    first opened, so nothing done to the repository's files afterwards reaches the scorers; `check`
    tells which stores' files in the repository no longer match.
    """

    stores: dict[str, VectorStore] = field(default_factory=dict)
    snapshots: Snapshots | None = None
    sources: dict[str, _Source] = field(default_factory=dict)

    def open(self, path: Path, fingerprint: str) -> VectorStore:
        if fingerprint not in self.stores:
            signature = _signature(path)
            if self.snapshots is not None:
                store = VectorStore(self.snapshots.store(path, fingerprint))
            else:
                store = VectorStore(path)
                if store.fingerprint != fingerprint:
                    raise BundleError(f"{path / MANIFEST}: store fingerprint {store.fingerprint[:12]} is not "
                                      f"{fingerprint[:12]}, the one the model was trained on")
                store.verify()
            self.stores[fingerprint] = store
            self.sources[fingerprint] = _Source(path, signature)
        return self.stores[fingerprint]

    def for_bundle(self, bundle: Bundle, repository: Path) -> VectorStore:
        """The shared store the version reads."""
        return self.open(bundle.store_path(repository), bundle.store_fingerprint)

    def mapped(self, path: Path, sha256: str) -> np.ndarray:
        """A verified bundle array to memory-map (from its private copy when there are snapshots)."""
        if self.snapshots is not None:
            return np.load(self.snapshots.file(path, sha256), mmap_mode="r", allow_pickle=False)
        return np.load(path, allow_pickle=False)  # read whole: a file changed under a map kills the process

    def check(self) -> dict[str, str | None]:
        """Each opened store's problem (None: its files in the repository are as they were verified). A store
        whose files changed since is hashed again: it is broken unless they still match its fingerprint."""
        for fingerprint, source in self.sources.items():
            signature = _signature(source.path)
            if signature == source.signature:
                continue
            source.signature = signature
            try:
                manifest = StoreManifest.read(source.path)
                if manifest.fingerprint != fingerprint:
                    raise BundleError(f"{source.path / MANIFEST}: the store manifest now names fingerprint "
                                      f"{manifest.fingerprint[:12]}, not {fingerprint[:12]}")
                check_fingerprint(source.path, manifest, file_hashes(source.path))
            except (BundleError, OSError) as exc:
                source.problem = str(exc)
            else:
                source.problem = None
        return {fingerprint: source.problem for fingerprint, source in self.sources.items()}

    def __len__(self) -> int:
        return len(self.stores)


class Scorer:
    """One model version ready to score texts: its bundle, featurizer and onnxruntime session."""

    def __init__(self, bundle: Bundle, store: VectorStore, options: ort.SessionOptions | None = None,
                 stores: StoreCache | None = None) -> None:
        self.bundle = bundle
        self.name = bundle.name
        self.version = bundle.version
        self.labels = bundle.labels
        self.store = store
        features = bundle.features
        sif = None
        if features.sif:
            cache = stores if stores is not None else StoreCache()
            sif = cache.mapped(bundle.sif_file, bundle.manifest.files.get(SIF_FILE, ""))
            if sif.shape != (len(store),):
                raise BundleError(f"{bundle.sif_file}: shape {list(sif.shape)}; expected [{len(store)}], one weight "
                                  "per store row")
        self.featurizer = Featurizer(
            features,
            Preprocessor(bundle.preprocessing),
            store.index,
            store.matrix,
            sif_weights=sif,
            lexicon=bundle.lexicon() if features.lexical else None,
            trained=bundle.trained_rows(len(store)) if features.mode == "finetune" else None,
        )
        self.session = ort.InferenceSession(str(bundle.model_file), sess_options=options or session_options(),
                                            providers=["CPUExecutionProvider"])
        self._check_graph()
        self._check_tables()

    @classmethod
    def open(cls, path: Path, repository: Path | None = None, stores: StoreCache | None = None,
             options: ort.SessionOptions | None = None, verify: bool = True) -> Scorer:
        """The version folder `path` (its repository is the folder two levels up, unless given)."""
        path = Path(path)
        bundle = Bundle.open(path, verify=verify)
        if path.name != str(bundle.version) or path.parent.name != bundle.name:
            raise BundleError(f"{path}: manifest says {bundle.name}/{bundle.version}")
        cache = stores if stores is not None else StoreCache()  # an empty cache is falsy: test for None
        return cls(bundle, cache.for_bundle(bundle, repository or path.parent.parent), options, cache)

    @classmethod
    def from_repository(cls, repository: Path | str, model: str, version: int = 0, **kwargs: Any) -> Scorer:
        """`model` at `version` (0: the newest complete version) of a model repository."""
        repository = Path(repository)
        versions = versions_of(repository / model)
        if not versions:
            raise BundleError(f"{repository / model}: no complete version of model {model!r}")
        chosen = versions[-1] if version == 0 else version
        if chosen not in versions:
            raise BundleError(f"{repository / model}: no version {version}; versions: {versions}")
        return cls.open(repository / model / str(chosen), repository, **kwargs)

    def _check_graph(self) -> None:
        """Refuses a graph that does not take this mode's inputs or give one probability per label."""
        where = self.bundle.model_file
        expected = self.bundle.features.input_names
        inputs = {graph_input.name: graph_input for graph_input in self.session.get_inputs()}
        if sorted(inputs) != sorted(expected):
            raise BundleError(f"{where}: inputs {sorted(inputs)}, expected {sorted(expected)}")
        for name, graph_input in inputs.items():
            wanted = _INPUT_TYPES.get(name, _DEFAULT_INPUT_TYPE)
            if graph_input.type != wanted or len(graph_input.shape) != 2:
                raise BundleError(f"{where}: input {name!r} is {graph_input.type} of rank {len(graph_input.shape)}; "
                                  f"expected {wanted} of rank 2")
        outputs = {graph_output.name: graph_output for graph_output in self.session.get_outputs()}
        if OUTPUT not in outputs:
            raise BundleError(f"{where}: no output {OUTPUT!r}; outputs: {sorted(outputs)}")
        shape = outputs[OUTPUT].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != len(self.labels)):
            raise BundleError(f"{where}: output {OUTPUT!r} has shape {shape}; expected [n, {len(self.labels)}] "
                              f"for the {len(self.labels)} labels")

    def _check_tables(self) -> None:
        """Refuses a graph whose id tables are not the bundle's: each table must answer the largest id the
        bundle's lexicon or trained rows produce and refuse the next. Only answers prove it (the graph's
        shapes are not visible to onnxruntime's API), and a table too small fails only the calls whose
        texts reach its missing rows, long after warm-up."""
        featurizer = self.featurizer
        tables = []
        if featurizer.lexicon is not None and self.bundle.features.lexical:
            tables.append((LEXICON_IDS_INPUT, len(featurizer.lexicon) + 1, f"the lexicon's {len(featurizer.lexicon)} "
                           f"n-grams ({LEXICON_FILE})"))
        if featurizer.trained is not None:
            tables.append((FINETUNE_INPUT, FIRST_TRAINED_ID + len(featurizer.trained),
                           f"the {len(featurizer.trained)} trained rows ({TRAINED_ROWS_FILE}, {TRAINED_BUCKETS_FILE})"))
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the refusal expected of the second probe is not an error to log
        for name, rows, what in tables:
            inputs = featurizer.encode(["table check"]).inputs
            for row, should_answer in ((rows - 1, True), (rows, False)):
                probe = dict(inputs)
                probe[name] = np.array([[row]], dtype=np.int64)
                if name == LEXICON_IDS_INPUT:
                    probe[LEXICON_WEIGHTS_INPUT] = np.ones((1, 1), dtype=np.float32)
                try:
                    self.session.run([OUTPUT], probe, quiet)
                    answered = True
                except (ort.capi.onnxruntime_pybind11_state.Fail,
                        ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                        ort.capi.onnxruntime_pybind11_state.RuntimeException):
                    answered = False
                if answered != should_answer:
                    size = "fewer" if should_answer else "more"
                    raise BundleError(f"{self.bundle.model_file}: the graph's table for input {name!r} has {size} "
                                      f"than the {rows} rows {what} need (id {row} was "
                                      f"{'refused' if should_answer else 'answered'}); the files come from "
                                      "different trainings")

    def predict(self, texts: list[str]) -> Prediction:
        """Probabilities of every label for each text, with token statistics and stage timings."""
        start = time.perf_counter()
        encoded = self.featurizer.encode(texts)
        encoded_at = time.perf_counter()
        probabilities = self.session.run([OUTPUT], encoded.inputs)[0]
        if not np.isfinite(probabilities).all():
            raise NonFiniteAnswer(self._non_finite(texts, probabilities))
        done = time.perf_counter()
        return Prediction(probabilities, encoded.token_counts, encoded.oov_fractions, encoded_at - start,
                          done - encoded_at, start)

    def _non_finite(self, texts: list[str], probabilities: np.ndarray) -> str:
        row = int(np.flatnonzero(~np.isfinite(probabilities).all(axis=1))[0])
        return (f"model {self.name!r} version {self.version} answered a non-finite probability for text {row} of "
                f"{len(texts)} ({probabilities[row].tolist()}); no answer is sent (see the server log)")

    def warm_up(self, text: str = "warm up the model") -> None:
        """Real answers for a text, an empty one and both together; raises BundleError if any is wrong.

        Wrong means: not one row per text and one column per label, not finite, or rows not
        summing to 1. The graph's declared shapes can be symbolic, so only an answer proves them.
        """
        where = self.bundle.model_file
        for sample in ([text], [""], [text, ""]):
            probabilities = self.predict(sample).probabilities
            if probabilities.shape != (len(sample), len(self.labels)):
                raise BundleError(f"{where}: warm-up on {len(sample)} text(s) answered shape "
                                  f"{list(probabilities.shape)}; expected [{len(sample)}, {len(self.labels)}] "
                                  f"for the {len(self.labels)} labels")
            sums = probabilities.sum(axis=1)
            if not np.all(np.isfinite(probabilities)) or np.any(np.abs(sums - 1.0) > 1e-4):
                raise BundleError(f"{where}: warm-up on {sample!r} gave rows summing to {sums.tolist()}, "
                                  "not a probability distribution")

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "version": self.version, "mode": self.bundle.features.mode,
                "labels": len(self.labels), "store": self.store.fingerprint[:12], "encoder": self.featurizer.encoder}
