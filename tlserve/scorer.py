"""In-process scoring: a model version's texts -> probabilities, without any server.

`Scorer` is what the server runs inside every batch, and what offline scoring and
notebooks use directly: the bundle's own preprocessing and features (the same modules
the trainer used) and one onnxruntime session::

    from tlserve.scorer import Scorer

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tlserve.bundle import Bundle, versions_of
from tlserve.errors import BundleError
from tlserve.features import FINETUNE_INPUT, LEXICON_IDS_INPUT, OUTPUT, Featurizer, TrainedRows
from tlserve.lexicon import Lexicon
from tlserve.preprocessing import Preprocessor
from tlserve.vector_store import VectorStore

_LOGGER = logging.getLogger(__name__)

# ONNX type strings of each graph input, by name.
_INPUT_TYPES = {FINETUNE_INPUT: "tensor(int64)", LEXICON_IDS_INPUT: "tensor(int64)"}
_DEFAULT_INPUT_TYPE = "tensor(float)"


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


@dataclass
class StoreCache:
    """Vector stores opened once each, by fingerprint."""

    stores: dict[str, VectorStore] = field(default_factory=dict)

    def open(self, path: Path, fingerprint: str) -> VectorStore:
        if fingerprint not in self.stores:
            store = VectorStore(path)
            if store.fingerprint != fingerprint:
                raise BundleError(f"{path}: store fingerprint {store.fingerprint[:12]} is not the bundle's "
                                  f"{fingerprint[:12]}")
            self.stores[fingerprint] = store
        return self.stores[fingerprint]

    def for_bundle(self, bundle: Bundle, repository: Path) -> VectorStore:
        """The shared store the version reads."""
        return self.open(bundle.store_path(repository), bundle.store_fingerprint)

    def __len__(self) -> int:
        return len(self.stores)


class Scorer:
    """One model version ready to score texts: its bundle, featurizer and onnxruntime session."""

    def __init__(self, bundle: Bundle, store: VectorStore, options: ort.SessionOptions | None = None) -> None:
        self.bundle = bundle
        self.name = bundle.name
        self.version = bundle.version
        self.labels = bundle.labels
        self.store = store
        features = bundle.features
        sif = None
        if features.sif:
            sif = np.load(bundle.sif_file, mmap_mode="r", allow_pickle=False)
        self.featurizer = Featurizer(
            features,
            Preprocessor(bundle.preprocessing),
            store.index,
            store.matrix,
            sif_weights=sif,
            lexicon=Lexicon.load(bundle.path, features.lexical_units) if features.lexical else None,
            trained=TrainedRows.load(bundle.path, len(store), features.buckets) if features.mode == "finetune"
            else None,
        )
        self.session = ort.InferenceSession(str(bundle.model_file), sess_options=options or session_options(),
                                            providers=["CPUExecutionProvider"])
        self._check_graph()

    @classmethod
    def open(cls, path: Path, repository: Path | None = None, stores: StoreCache | None = None,
             options: ort.SessionOptions | None = None, verify: bool = True) -> Scorer:
        """The version folder `path` (its repository is the folder two levels up, unless given)."""
        path = Path(path)
        bundle = Bundle.open(path, verify=verify)
        if path.name != str(bundle.version) or path.parent.name != bundle.name:
            raise BundleError(f"{path}: manifest says {bundle.name}/{bundle.version}")
        cache = stores if stores is not None else StoreCache()  # an empty cache is falsy: test for None
        return cls(bundle, cache.for_bundle(bundle, repository or path.parent.parent), options)

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

    def predict(self, texts: list[str]) -> Prediction:
        """Probabilities of every label for each text, with token statistics and stage timings."""
        start = time.perf_counter()
        encoded = self.featurizer.encode(texts)
        encoded_at = time.perf_counter()
        probabilities = self.session.run([OUTPUT], encoded.inputs)[0]
        done = time.perf_counter()
        return Prediction(probabilities, encoded.token_counts, encoded.oov_fractions, encoded_at - start,
                          done - encoded_at, start)

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
                "labels": len(self.labels), "store": self.store.fingerprint[:12]}
