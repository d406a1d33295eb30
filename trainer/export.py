"""ONNX export with tf2onnx and the parity check against Keras that guards every bundle.

The graph has one named input (``features`` float32 [batch, F] or ``token_ids`` int64
[batch, length]) and one output ``probabilities`` float32 [batch, classes]; the batch
(and length) dimensions are dynamic. Opset 17: supported by tf2onnx 1.16+ and by every
onnxruntime of the last years.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.errors import TlserveError
from tlserve.features import OUTPUT

_LOGGER = logging.getLogger(__name__)

OPSET = 17
MAX_ABS_DIFF = 1e-5


@dataclass
class Parity:
    """Keras against onnxruntime on the same inputs."""

    examples: int
    max_abs_diff: float
    argmax_agreement: float
    tolerance: float = MAX_ABS_DIFF

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.argmax_agreement == 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def to_onnx(model: Any, input_name: str, input_dtype: str, width: int | None, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    shape = (None, width) if width is not None else (None, None)
    signature = (tf.TensorSpec(shape, getattr(tf, input_dtype), name=input_name),)
    # Keras 3 models have no `output_names` attribute, which tf2onnx reads.
    if not hasattr(model, "output_names"):
        model.output_names = [OUTPUT]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    # Name the output ourselves: tf2onnx derives it from the last layer's name.
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [OUTPUT if name == old else name for name in node.output]
    proto.graph.output[0].name = OUTPUT
    path.write_bytes(proto.SerializeToString())


def check_parity(model: Any, onnx_path: Path, inputs: np.ndarray, batch_size: int = 1024) -> Parity:
    """Runs Keras and onnxruntime on all `inputs`; the bundle is refused if they disagree."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    max_diff = 0.0
    agree = 0
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        expected = np.asarray(model(chunk, training=False))
        actual = session.run([OUTPUT], {input_name: chunk})[0]
        max_diff = max(max_diff, float(np.max(np.abs(expected - actual))))
        agree += int(np.sum(expected.argmax(1) == actual.argmax(1)))
    parity = Parity(len(inputs), max_diff, agree / max(1, len(inputs)))
    if not parity.ok:
        raise TlserveError(
            f"ONNX export disagrees with Keras on {len(inputs)} test inputs: max |dp| = {max_diff:.3g} "
            f"(limit {MAX_ABS_DIFF}), argmax agreement {parity.argmax_agreement:.4%}; no bundle was written"
        )
    return parity
