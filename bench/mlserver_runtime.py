"""An MLServer custom runtime serving a tlserve bundle: the same preprocessing, features and ONNX model.

Loaded by MLServer 1.7.1 in its own venv (.venv-mlserver, see `bench/systems.py`), where
tlserve is installed without dependencies: the runtime uses tlserve's in-process `Scorer`
(the server's own) to open the bundle and its store, so MLServer does exactly tlserve's per-text work and the
benchmark compares the serving layers. Adaptive batching is MLServer's own
(max_batch_size / max_batch_time in model-settings.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class TlserveRuntime(MLModel):
    async def load(self) -> bool:
        from tlserve.core.scorer import Scorer

        self.runtime = Scorer.open(Path(self.settings.parameters.uri))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts: list[str] = StringCodec.decode_input(payload.inputs[0])
        prediction = self.runtime.predict(texts)
        probabilities: Any = prediction.probabilities
        labels = [self.runtime.labels[j] for j in probabilities.argmax(axis=1).tolist()]
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="probabilities", shape=list(probabilities.shape), datatype="FP32",
                               data=probabilities.ravel().tolist()),
                StringCodec.encode_output("label", labels),
            ],
        )
