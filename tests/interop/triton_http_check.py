"""Calls a tlserve server's HTTP port with tritonclient's HTTP client, in the interop venv.

    python triton_http_check.py --url 127.0.0.1:HTTP_PORT --model NAME --texts FILE --out FILE

Writes JSON with what the third-party client saw: readiness, metadata, probabilities and labels
for every text (binary tensors, tritonclient's default), the same for JSON tensors on the
first texts, and the classification extension's answer. tlserve is never imported here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def _infer(client: triton.InferenceServerClient, model: str, texts: list[str], binary: bool,
           classification: int = 0) -> triton.InferResult:
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_), binary_data=binary)
    if classification:
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=classification)]
    else:
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary),
                   triton.InferRequestedOutput("label", binary_data=binary)]
    return client.infer(model, [text], outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSON list of texts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    texts = json.loads(args.texts.read_text())

    client = triton.InferenceServerClient(args.url)
    result: dict[str, object] = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(args.model),
    }
    probabilities, labels = [], []
    for start in range(0, len(texts), args.batch):
        answer = _infer(client, args.model, texts[start : start + args.batch], binary=True)
        probabilities += answer.as_numpy("probabilities").tolist()
        labels += [label.decode() for label in answer.as_numpy("label").tolist()]
        result.setdefault("response_model_version", answer.get_response()["model_version"])
    result["probabilities"], result["labels"] = probabilities, labels
    # The same request in both encodings: JSON numbers must carry the binary tensor's float32 values exactly.
    # (Across different requests a text's answer may differ in its last bits with its batch companions.)
    as_json = _infer(client, args.model, texts[:20], binary=False)
    result["json_probabilities"] = as_json.as_numpy("probabilities").tolist()
    result["binary_probabilities_same_request"] = _infer(client, args.model, texts[:20], binary=True) \
        .as_numpy("probabilities").tolist()
    result["json_labels"] = [str(label, "utf-8") if isinstance(label, bytes) else str(label)
                             for label in as_json.as_numpy("label").tolist()]
    classified = _infer(client, args.model, texts[:3], binary=True, classification=2)
    result["classification"] = [[entry.decode() for entry in row]
                                for row in classified.as_numpy("probabilities").tolist()]
    try:
        _infer(client, "no-such-model", texts[:1], binary=True)
        result["unknown_model_error"] = None
    except InferenceServerException as exc:
        result["unknown_model_error"] = {"status": exc.status(), "message": exc.message()}
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
