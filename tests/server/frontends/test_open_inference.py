"""The Open Inference Protocol (KServe V2) endpoint, proven with clients tlserve did not write.

tritonclient pins protobuf below 7 and grpc_requests brings its own reflection client, so both
run in a venv of their own (.venv-interop, pinned by tests/interop/requirements.txt, built on
first use) against a real server on loopback. Error cases use tlserve's generated V2 stubs.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.contract.oip import grpc_predict_v2_pb2_grpc as v2_grpc

from conftest import INTEROP, ServerProcess, Trained, native_probabilities, sample_texts


@pytest.mark.parametrize("model", ["wn-finetune", "wn-frozen"])
def test_tritonclient_sees_ready_models_metadata_and_the_native_probabilities(
        server: ServerProcess, trained: Trained, interop_python: Path, tmp_path: Path, model: str) -> None:
    texts = sample_texts(1000)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    subprocess.run([str(interop_python), str(INTEROP / "triton_check.py"), "--protocol", "grpc", "--url", server.target,
                    "--model", model, "--texts", str(tmp_path / "texts.json"), "--out", str(tmp_path / "out.json")],
                   check=True, timeout=300)
    seen = json.loads((tmp_path / "out.json").read_text())
    labels, expected = native_probabilities(server, model, texts)

    assert seen["server_live"] and seen["server_ready"] and seen["model_ready"]
    assert seen["unknown_model_ready"] is False
    assert seen["server_metadata"]["name"] == "tlserve"
    assert "classification" in seen["server_metadata"]["extensions"]
    metadata = seen["model_metadata"]
    assert metadata["name"] == model and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": ["-1", str(len(labels))]},
        {"name": "label", "datatype": "BYTES", "shape": ["-1"]},
        {"name": "explanation", "datatype": "BYTES", "shape": ["-1"]},  # answered only when named
    ]
    assert seen["response_model_version"] == "1"

    got = seen["probabilities"]
    assert len(got) == len(expected) == 1000
    worst = max(abs(a - b) for row_a, row_b in zip(got, expected, strict=True) for a, b in zip(row_a, row_b,
                                                                                                strict=True))
    print(f"{model}: tritonclient vs native, {len(got)} texts: max |dp| = {worst:.3g}")
    assert worst <= 1e-6, worst
    assert seen["labels"] == [labels[max(range(len(row)), key=row.__getitem__)] for row in expected]

    # Triton's classification extension: "probability:index:label", best first.
    for row, answer in zip(expected[:3], seen["classification"], strict=True):
        best = sorted(range(len(row)), key=lambda j: -row[j])[:2]
        assert [entry.split(":", 2)[1:] for entry in answer] == [[str(j), labels[j]] for j in best]
        assert abs(float(answer[0].split(":")[0]) - row[best[0]]) <= 1e-6
    assert seen["unknown_model_error"]["status"] == "StatusCode.NOT_FOUND"
    assert "no-such-model" in seen["unknown_model_error"]["message"]


def test_reflection_driven_client_lists_and_calls_both_services(
        server: ServerProcess, interop_python: Path, tmp_path: Path) -> None:
    subprocess.run([str(interop_python), str(INTEROP / "reflection_client_check.py"), "--url", server.target,
                    "--model", "wn-frozen", "--out", str(tmp_path / "out.json")], check=True, timeout=120)
    seen = json.loads((tmp_path / "out.json").read_text())
    assert {"tlserve.v1.Classifier", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= set(
        seen["services"])
    assert {"ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady", "ServerMetadata"} <= set(
        seen["methods"]["inference.GRPCInferenceService"])
    assert {"Classify", "ClassifyStream", "ListModels", "GetModel"} <= set(seen["methods"]["tlserve.v1.Classifier"])

    labels, expected = native_probabilities(server, "wn-frozen", seen["texts"])
    metadata = seen["model_metadata"]
    assert json.loads(metadata["parameters"]["labels"]["string_param"]) == labels
    assert json.loads(metadata["outputs"][0]["parameters"]["labels"]["string_param"]) == labels

    native = seen["classify"]["results"]
    assert [r["labels"][0]["label"] for r in native] == [labels[row.index(max(row))] for row in expected]
    infer = seen["model_infer"]
    by_name = {output["name"]: output for output in infer["outputs"]}
    assert by_name["probabilities"]["shape"] == [str(len(seen["texts"])), str(len(labels))]
    flat = by_name["probabilities"]["contents"]["fp32_contents"]
    rows = [flat[i * len(labels) : (i + 1) * len(labels)] for i in range(len(seen["texts"]))]
    assert max(abs(a - b) for ra, rb in zip(rows, expected, strict=True) for a, b in zip(ra, rb, strict=True)) <= 1e-6
    decoded = [base64.b64decode(label).decode() for label in by_name["label"]["contents"]["bytes_contents"]]
    assert decoded == [r["labels"][0]["label"] for r in native]


# --- errors and encodings, with tlserve's own V2 stubs ---------------------------------------------------------


def _raw(texts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def _text_input(n: int, **overrides: Any) -> v2.ModelInferRequest.InferInputTensor:
    fields: dict[str, Any] = {"name": "text", "datatype": "BYTES", "shape": [n]}
    fields.update(overrides)
    return v2.ModelInferRequest.InferInputTensor(**fields)


@pytest.fixture()
def stub(server: ServerProcess) -> Any:
    with grpc.insecure_channel(server.target) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def _status(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_contents_and_raw_inputs_give_the_same_answer(stub: Any) -> None:
    texts = ["a young horse", "the act of running fast", "汉字 和 emoji 🐎", ""]
    encoded = [t.encode() for t in texts]
    raw = stub.ModelInfer(v2.ModelInferRequest(model_name="wn-frozen", id="r1", inputs=[_text_input(4)],
                                               raw_input_contents=[_raw(encoded)]))
    plain = stub.ModelInfer(v2.ModelInferRequest(
        model_name="wn-frozen", model_version="1", inputs=[_text_input(4, contents={"bytes_contents": encoded})]))
    assert raw.id == "r1" and raw.model_version == "1" and len(raw.raw_output_contents) == 2
    raw_probabilities = struct.unpack(f"<{4 * 10}f", raw.raw_output_contents[0])
    assert max(abs(a - b) for a, b in zip(raw_probabilities, plain.outputs[0].contents.fp32_contents,
                                          strict=True)) == 0.0
    labels = [bytes(x) for x in plain.outputs[1].contents.bytes_contents]
    assert raw.raw_output_contents[1] == _raw(labels)
    # A [n, 1] shape (common with tritonclient users) is accepted too.
    column = stub.ModelInfer(v2.ModelInferRequest(model_name="wn-frozen", inputs=[_text_input(4, shape=[4, 1])],
                                                  raw_input_contents=[_raw(encoded)]))
    assert column.raw_output_contents == raw.raw_output_contents


@pytest.mark.parametrize(("request_fields", "code", "fragment"), [
    ({"inputs": [_text_input(1, name="input")], "raw_input_contents": [_raw([b"x"])]},
     grpc.StatusCode.INVALID_ARGUMENT, "one input, 'text'"),
    ({"inputs": [_text_input(1, datatype="FP32")], "raw_input_contents": [_raw([b"x"])]},
     grpc.StatusCode.INVALID_ARGUMENT, "datatype is FP32"),
    ({"inputs": [_text_input(2)], "raw_input_contents": [_raw([b"x"])]},
     grpc.StatusCode.INVALID_ARGUMENT, "says 2 texts but 1 were sent"),
    ({"inputs": [_text_input(1, shape=[1, 2])], "raw_input_contents": [_raw([b"x"])]},
     grpc.StatusCode.INVALID_ARGUMENT, "shape is [1, 2]"),
    ({"inputs": [_text_input(1)], "raw_input_contents": [_raw([b"\xff\xfe"])]},
     grpc.StatusCode.INVALID_ARGUMENT, "element 0 is not UTF-8"),
    ({"inputs": [_text_input(1)], "raw_input_contents": [struct.pack("<I", 10) + b"abc"]},
     grpc.StatusCode.INVALID_ARGUMENT, "says 10 bytes at offset 0 but only 3 remain"),
    ({"inputs": [_text_input(0)], "raw_input_contents": [b""]},
     grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
    ({"inputs": [_text_input(1025)], "raw_input_contents": [_raw([b"x"] * 1025)]},
     grpc.StatusCode.INVALID_ARGUMENT, "max_texts_per_request=1024"),
    ({"inputs": [_text_input(1)], "raw_input_contents": [_raw([b"x" * 16_385])]},
     grpc.StatusCode.INVALID_ARGUMENT, "max_text_bytes=16384"),
    ({"inputs": [_text_input(1)], "raw_input_contents": [_raw([b"x"])],
      "outputs": [v2.ModelInferRequest.InferRequestedOutputTensor(name="logits")]},
     grpc.StatusCode.INVALID_ARGUMENT, "outputs[0] 'logits'"),
    ({"model_version": "v2", "inputs": [_text_input(1)], "raw_input_contents": [_raw([b"x"])]},
     grpc.StatusCode.INVALID_ARGUMENT, "model_version 'v2' is not a version number"),
    ({"model_version": "9", "inputs": [_text_input(1)], "raw_input_contents": [_raw([b"x"])]},
     grpc.StatusCode.NOT_FOUND, "version 9"),
])
def test_bad_infer_requests_get_the_right_status_and_say_what_was_wrong(
        stub: Any, request_fields: dict[str, Any], code: grpc.StatusCode, fragment: str) -> None:
    request = v2.ModelInferRequest(model_name="wn-frozen")
    request.MergeFrom(v2.ModelInferRequest(**{"model_name": "wn-frozen", **request_fields}))
    got = _status(lambda: stub.ModelInfer(request))
    assert got[0] == code and fragment in got[1], got
    # The server keeps serving.
    ok = stub.ModelInfer(v2.ModelInferRequest(model_name="wn-frozen", inputs=[_text_input(1)],
                                              raw_input_contents=[_raw([b"a dog"])]))
    assert ok.outputs[1].name == "label"


def test_model_ready_metadata_and_repository_calls(stub: Any) -> None:
    assert stub.ModelReady(v2.ModelReadyRequest(name="wn-frozen", version="1")).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name="wn-frozen", version="7")).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name="../etc")).ready
    assert _status(lambda: stub.ModelReady(v2.ModelReadyRequest(name="wn-frozen", version="x")))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT)
    assert _status(lambda: stub.ModelMetadata(v2.ModelMetadataRequest(name="nope")))[0] == grpc.StatusCode.NOT_FOUND
    code, details = _status(lambda: stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name="wn-frozen")))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "repository folder" in details


def test_v2_calls_share_the_native_metrics(server: ServerProcess, stub: Any) -> None:
    def infer_count() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("tlserve_requests_total{") and 'method="ModelInfer"' in line
                   and 'model="wn-finetune"' in line and 'code="OK"' in line)

    before = infer_count()
    for _ in range(3):
        stub.ModelInfer(v2.ModelInferRequest(model_name="wn-finetune", inputs=[_text_input(1)],
                                             raw_input_contents=[_raw([b"a large cat"])]))
    assert infer_count() == before + 3
