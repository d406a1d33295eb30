"""Calls a tlserve server with tritonclient, in a venv of its own (it pins protobuf below 7).

    python triton_client_check.py --url 127.0.0.1:PORT --model NAME --texts FILE --out FILE

Prints nothing on success; writes JSON with what the third-party client saw: readiness,
metadata, probabilities and labels for every text (in calls of --batch texts), and the
classification extension's answer for the first texts. The test compares them with the
native API. tlserve is never imported here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from google.protobuf.json_format import MessageToDict


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
        "server_metadata": MessageToDict(client.get_server_metadata()),
        "model_metadata": MessageToDict(client.get_model_metadata(args.model)),
    }
    probabilities, labels = [], []
    for start in range(0, len(texts), args.batch):
        chunk = texts[start : start + args.batch]
        text = triton.InferInput("text", [len(chunk)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode("utf-8") for t in chunk], dtype=np.object_))
        answer = client.infer(args.model, [text], outputs=[triton.InferRequestedOutput("probabilities"),
                                                           triton.InferRequestedOutput("label")])
        probabilities += answer.as_numpy("probabilities").tolist()
        labels += [label.decode() for label in answer.as_numpy("label").tolist()]
        result.setdefault("response_model_version", answer.get_response().model_version)
    result["probabilities"] = probabilities
    result["labels"] = labels

    text = triton.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts[:3]], dtype=np.object_))
    top = client.infer(args.model, [text], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)])
    result["classification"] = [[e.decode() for e in row] for row in top.as_numpy("probabilities").tolist()]

    try:
        client.infer("no-such-model", [text])
    except triton.InferenceServerException as exc:
        result["unknown_model_error"] = {"status": exc.status(), "message": exc.message()}
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
