"""Calls a tlserve server with tritonclient (gRPC or HTTP), in a venv of its own (it pins protobuf below 7).

    python triton_check.py --protocol grpc --url 127.0.0.1:PORT --model NAME --texts FILE --out FILE
    python triton_check.py --protocol http --url 127.0.0.1:HTTP_PORT --model NAME --texts FILE --out FILE

Writes JSON with what the third-party client saw: readiness, metadata, probabilities and labels
for every text (in calls of --batch texts; over HTTP as binary tensors, tritonclient's default,
and the same for JSON tensors on the first texts), the classification extension's answer for
the first texts, and the error of an unknown model. The tests compare them with the native API.
tlserve is never imported here.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of texts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    texts = json.loads(args.texts.read_text())
    http = args.protocol == "http"
    triton: Any = importlib.import_module(f"tritonclient.{args.protocol}")

    def infer(model: str, chunk: list[str], binary: bool = True, classification: int = 0) -> Any:
        text = triton.InferInput("text", [len(chunk)], "BYTES")
        data = np.array([t.encode("utf-8") for t in chunk], dtype=np.object_)
        text.set_data_from_numpy(data, binary_data=binary) if http else text.set_data_from_numpy(data)
        options = {"binary_data": binary} if http else {}
        outputs = ([triton.InferRequestedOutput("probabilities", class_count=classification, **options)]
                   if classification else [triton.InferRequestedOutput(name, **options)
                                           for name in ("probabilities", "label")])
        return client.infer(model, [text], outputs=outputs)

    def plain(message: Any) -> Any:
        return message if http else MessageToDict(message)

    client = triton.InferenceServerClient(args.url)
    result: dict[str, object] = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server_metadata": plain(client.get_server_metadata()),
        "model_metadata": plain(client.get_model_metadata(args.model)),
    }
    probabilities, labels = [], []
    for start in range(0, len(texts), args.batch):
        answer = infer(args.model, texts[start : start + args.batch])
        probabilities += answer.as_numpy("probabilities").tolist()
        labels += [label.decode() for label in answer.as_numpy("label").tolist()]
        response = answer.get_response()
        result.setdefault("response_model_version", response["model_version"] if http else response.model_version)
    result["probabilities"], result["labels"] = probabilities, labels
    if http:
        # The same request in both encodings: JSON numbers must carry the binary tensor's float32 values exactly.
        # (Across different requests a text's answer may differ in its last bits with its batch companions.)
        as_json = infer(args.model, texts[:20], binary=False)
        result["json_probabilities"] = as_json.as_numpy("probabilities").tolist()
        result["binary_probabilities_same_request"] = infer(args.model, texts[:20]).as_numpy("probabilities").tolist()
        result["json_labels"] = [str(label, "utf-8") if isinstance(label, bytes) else str(label)
                                 for label in as_json.as_numpy("label").tolist()]
    classified = infer(args.model, texts[:3], classification=2)
    result["classification"] = [[entry.decode() for entry in row]
                                for row in classified.as_numpy("probabilities").tolist()]
    try:
        infer("no-such-model", texts[:1])
        result["unknown_model_error"] = None
    except InferenceServerException as exc:
        result["unknown_model_error"] = {"status": exc.status(), "message": exc.message()}
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
