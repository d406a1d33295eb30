"""One loaded model version: shared preprocessing and features, then an onnxruntime session.

`ModelRuntime.predict` is synchronous and runs in the batcher's inference thread; it
times each stage (preprocessing and pooling, inference) for the metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from tlserve.bundle import Bundle
from tlserve.features import OUTPUT, Featurizer
from tlserve.preprocessing import Preprocessor
from tlserve.server.encoding import ResponseEncoder
from tlserve.vector_store import VectorStore

_LOGGER = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Outputs for a batch of texts."""

    probabilities: np.ndarray
    """float32 [n, classes]."""
    token_counts: np.ndarray
    oov_fractions: np.ndarray
    encode_seconds: float
    inference_seconds: float


def session_options(intra_op_threads: int, inter_op_threads: int, allow_spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Explicit thread counts: ORT's default (one per core) oversubscribes when several
    # workers share the machine.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


class ModelRuntime:
    """A model version ready to classify: bundle metadata, featurizer and session."""

    def __init__(self, bundle: Bundle, store: VectorStore, shared: VectorStore | None,
                 options: ort.SessionOptions) -> None:
        self.bundle = bundle
        self.name = bundle.name
        self.version = bundle.version
        self.labels = bundle.labels
        self.store = store
        features = bundle.features
        sif = None
        if features.sif:
            sif = np.load(bundle.path / "sif_weights.npy", mmap_mode="r", allow_pickle=False)
        self.featurizer = Featurizer(
            features,
            Preprocessor(bundle.preprocessing),
            store.index,
            len(store),
            matrix=shared.matrix if shared is not None else None,
            sif_weights=sif,
            store_index=shared.index if shared is not None else None,
        )
        self.session = ort.InferenceSession(
            str(bundle.model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = sorted(graph_input.name for graph_input in self.session.get_inputs())
        if names != sorted(features.input_names):
            raise ValueError(f"{bundle.model_file}: inputs {names}, expected {sorted(features.input_names)}")
        self.label_array = np.array(self.labels, dtype=object)
        self.encoder = ResponseEncoder(self.labels)

    def predict(self, texts: list[str]) -> Prediction:
        start = time.perf_counter()
        encoded = self.featurizer.encode(texts)
        encoded_at = time.perf_counter()
        probabilities = self.session.run([OUTPUT], encoded.inputs)[0]
        done = time.perf_counter()
        return Prediction(probabilities, encoded.token_counts, encoded.oov_fractions, encoded_at - start,
                          done - encoded_at)

    def warm_up(self, text: str) -> None:
        """A real inference on a text and on an empty one; raises if either gives a bad distribution."""
        for sample in (text, ""):
            probabilities = self.predict([sample]).probabilities
            if not np.all(np.isfinite(probabilities)) or abs(float(probabilities.sum()) - 1.0) > 1e-4:
                raise ValueError(f"{self.bundle.path}: warm-up on {sample!r} gave {probabilities}")

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "version": self.version, "mode": self.bundle.features.mode,
                "labels": len(self.labels), "store": self.store.fingerprint[:12]}
