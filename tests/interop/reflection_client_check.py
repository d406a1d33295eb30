"""Calls a tlserve server with grpc_requests, a generic client that learns every message from server reflection.

    python reflection_client_check.py --url 127.0.0.1:PORT --model NAME --out FILE

No stub or .proto of tlserve is used: services, methods and message types all come from the
server's reflection service. Writes JSON with the listed services and one answer from each
API, for the test to compare.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

from grpc_requests import Client

TEXTS = ["a small domesticated carnivorous mammal", "a written message addressed to a person"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    client = Client.get_by_endpoint(args.url)
    result: dict[str, object] = {
        "services": sorted(client.service_names),
        "methods": {name: sorted(client.service(name).method_names) for name in client.service_names
                    if name in ("tlserve.v1.Classifier", "inference.GRPCInferenceService")},
    }
    result["classify"] = client.request("tlserve.v1.Classifier", "Classify", {"model": args.model, "texts": TEXTS})
    result["model_metadata"] = client.request("inference.GRPCInferenceService", "ModelMetadata", {"name": args.model})
    # JSON mapping of protobuf: bytes fields are base64 strings.
    encoded = [base64.b64encode(text.encode()).decode() for text in TEXTS]
    result["model_infer"] = client.request("inference.GRPCInferenceService", "ModelInfer", {
        "model_name": args.model,
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)],
                    "contents": {"bytes_contents": encoded}}],
    })
    result["texts"] = TEXTS
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
