"""The HTTP port beside gRPC: the JSON mirror of tlserve.v1, the Open Inference Protocol's REST binding,
/openapi.json, errors, tokens and TLS, all against real servers on loopback.

The references are the gRPC answers of the same server: the JSON mirror must parse (with
protobuf's JSON parser) into exactly the message gRPC returns.
"""

from __future__ import annotations

import http.client as http_client
import json
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

from conftest import INTEROP, ServerProcess, Trained, native_probabilities, sample_texts, start_server


def http(server: ServerProcess, method: str, path: str, body: bytes | dict[str, Any] | None = None,
         headers: dict[str, str] | None = None, scheme: str = "http", context: ssl.SSLContext | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{server.http_port}{path}", data=data, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_json(server: ServerProcess, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    status, _, data = http(server, method, path, body, **kwargs)
    return status, json.loads(data)


@pytest.fixture(scope="module")
def server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Any:
    proc = start_server(trained.repository, tmp_path_factory.mktemp("http") / "server.log",
                        "--max-queue-size", "1500", "--http-body-timeout-seconds", "1")
    yield proc
    assert proc.stop() == 0


@pytest.mark.parametrize("model", ["wn-finetune", "wn-frozen"])
def test_the_json_mirror_answers_what_grpc_answers_field_for_field(server: ServerProcess, model: str) -> None:
    texts = [*sample_texts(60), "", "汉字 and <b>markup</b> 🐎"]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for top_k, request_id in ((0, ""), (3, "r-42")):
            expected = stub.Classify(pb.ClassifyRequest(model=model, texts=texts, top_k=top_k,
                                                        request_id=request_id))
            body = {"texts": texts, "topK": top_k, **({"requestId": request_id} if request_id else {})}
            status, answer = http_json(server, "POST", f"/v1/models/{model}:classify", body)
            assert status == 200, answer
            assert json_format.ParseDict(answer, pb.ClassifyResponse()) == expected
            assert answer == json_format.MessageToDict(expected)  # the same JSON protobuf itself writes
        status, answer = http_json(server, "POST", f"/v1/models/{model}/versions/1:classify", {"texts": texts[:2]})
        assert status == 200 and answer["version"] == "1"
        listed = stub.ListModels(pb.ListModelsRequest())
        assert json_format.ParseDict(http_json(server, "GET", "/v1/models")[1], pb.ListModelsResponse()) == listed
        one = stub.GetModel(pb.GetModelRequest(model=model))
        assert json_format.ParseDict(http_json(server, "GET", f"/v1/models/{model}")[1], pb.ModelInfo()) == one


def _raw(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_open_inference_rest_in_json_and_binary_equals_the_native_answer(server: ServerProcess) -> None:
    texts = sample_texts(40)
    with grpc.insecure_channel(server.target) as channel:
        native = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="wn-frozen", texts=texts))
    labels = json.loads(http_json(server, "GET", "/v2/models/wn-frozen")[1]["parameters"]["labels"])
    expected = [[{e.label: e.probability for e in r.labels}[label] for label in labels] for r in native.results]
    request = {"id": "q1", "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    status, answer = http_json(server, "POST", "/v2/models/wn-frozen/infer", request)
    assert status == 200, answer
    assert answer["model_name"] == "wn-frozen" and answer["model_version"] == "1" and answer["id"] == "q1"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [len(texts), len(labels)]
    flat = outputs["probabilities"]["data"]
    assert [flat[i * len(labels):(i + 1) * len(labels)] for i in range(len(texts))] == expected
    assert outputs["label"]["data"] == [r.labels[0].label for r in native.results]

    # Triton's binary data extension (what tritonclient's HTTP client sends by default).
    header = json.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(_raw([t.encode() for t in texts]))}}],
                         "parameters": {"binary_data_output": True}}).encode()
    status, headers, body = http(server, "POST", "/v2/models/wn-frozen/infer",
                                 header + _raw([t.encode() for t in texts]),
                                 {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"})
    assert status == 200, body
    length = int(headers["Inference-Header-Content-Length"])
    document, blobs = json.loads(body[:length]), body[length:]
    sizes = [o["parameters"]["binary_data_size"] for o in document["outputs"]]
    probabilities = struct.unpack(f"<{len(texts) * len(labels)}f", blobs[: sizes[0]])
    assert list(probabilities) == [p for row in expected for p in row]
    assert blobs[sizes[0]:] == _raw([r.labels[0].label.encode() for r in native.results])

    # Classification extension and [n, 1] shapes.
    status, answer = http_json(server, "POST", "/v2/models/wn-frozen/versions/1/infer", {
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[texts[0]], [texts[1]]]}],
        "outputs": [{"name": "label", "parameters": {"classification": 2}}]})
    assert status == 200, answer
    (output,) = answer["outputs"]
    assert output["shape"] == [2, 2] and output["data"][0].split(":", 2)[2] == native.results[0].labels[0].label


def test_the_http_benchmark_reads_each_calls_cost_inside_the_server(server: ServerProcess) -> None:
    from tlserve.bench.http_load import server_us
    from tlserve.bench.systems import scrape, timings

    request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a small cat"]}]}
    before = timings(scrape(server.metrics_port), "wn-frozen")
    for _ in range(5):
        assert http_json(server, "POST", "/v2/models/wn-frozen/infer", request)[0] == 200
    after = timings(scrape(server.metrics_port), "wn-frozen")
    # Five HTTP calls, each encoded and run (alone or in batches with each other), each answered.
    calls = "call:http:ModelInfer"
    assert after[calls][1] - before.get(calls, (0.0, 0.0))[1] == 5
    assert after["respond"][1] - before.get("respond", (0.0, 0.0))[1] == 5
    for stage in ("encode", "inference", "batch_size"):
        assert 1 <= after[stage][1] - before.get(stage, (0.0, 0.0))[1] <= 5
    # Five texts in those batches.
    assert after["batch_size"][0] - before.get("batch_size", (0.0, 0.0))[0] == 5
    means = server_us(before, after)
    assert set(means) == {"call", "encode", "inference", "respond"}
    assert all(value > 0 for value in means.values())
    assert means["call"] > means["respond"]


def test_health_metadata_and_readiness(server: ServerProcess) -> None:
    assert http_json(server, "GET", "/v2/health/live") == (200, {"live": True})
    assert http_json(server, "GET", "/v2/health/ready") == (200, {"ready": True})
    assert http_json(server, "GET", "/v2/models/wn-frozen/ready") == (200, {"name": "wn-frozen", "version": "1",
                                                                          "ready": True})
    assert http_json(server, "GET", "/v2/models/nope/ready")[0] == 404  # the protocol: a 4xx for false
    status, metadata = http_json(server, "GET", "/v2")
    assert status == 200 and metadata["name"] == "tlserve" and "binary_tensor_data" in metadata["extensions"]
    status, model = http_json(server, "GET", "/v2/models/wn-finetune/versions/1")
    assert status == 200 and model["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1],
                                                    "parameters": {"content_type": "str"}}


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), [
    ("POST", "/v1/models/nope:classify", {"texts": ["x"]}, 404, "model 'nope' is not served"),
    ("POST", "/v1/models/wn-frozen/versions/9:classify", {"texts": ["x"]}, 404, "version 9"),
    ("POST", "/v1/models/wn-frozen/versions/x1:classify", {"texts": ["x"]}, 400, "version in the path 'x1'"),
    ("POST", "/v1/models/wn-frozen:classify", b'{"texts": ["x"', 400, "not valid JSON (Expecting"),
    ("POST", "/v1/models/wn-frozen:classify", b"\xff\xfe", 400, "not UTF-8"),
    ("POST", "/v1/models/wn-frozen:classify", {"texts": "one"}, 400, "texts"),
    ("POST", "/v1/models/wn-frozen:classify", {"txts": ["x"]}, 400, "no field 'txts'"),
    ("POST", "/v1/models/wn-frozen:classify", {"texts": []}, 400, "texts is empty"),
    ("POST", "/v1/models/wn-frozen:classify", {"texts": ["x" * 20000]}, 400, "max_text_bytes=16384"),
    ("POST", "/v1/models/wn-frozen:classify", {"texts": ["x"] * 1600}, 400, "max_texts_per_request=1024"),
    ("POST", "/v1/models/wn-frozen:classify", {"model": "wn-finetune", "texts": ["x"]}, 400, "path names"),
    ("POST", "/v2/models/wn-frozen/infer", {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES",
                                                       "data": ["x"]}]}, 400, "inputs[0]: name is 'txt'"),
    ("POST", "/v2/models/wn-frozen/infer", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                                       "data": ["x"]}]}, 400, "says 2 texts but 1"),
    ("POST", "/v2/models/wn-frozen/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32",
                                                       "data": [1.0]}]}, 400, "send BYTES"),
    ("POST", "/v2/models/wn-frozen/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                       "data": [7]}]}, 400, "data[0] is a JSON int"),
    ("POST", "/v2/models/wn-frozen/infer", [1, 2], 400, "JSON list"),
    ("POST", "/v2/models/wn-frozen/infer", b'{"id": "\\ud800", "inputs": []}', 400,
     "body.id holds a lone UTF-16 surrogate (\\ud800 at character 0)"),
    ("POST", "/v1/models/wn-frozen:classify", b'{"texts": ["a \\udfff cat"]}', 400, "body.texts[0] holds a lone"),
    ("POST", "/v1/models/wn-frozen:classify", b"[" * 100_000 + b"]" * 100_000, 400, "depth limit exceeded"),
    ("GET", "/v3/anything", None, 404, "no such path '/v3/anything'"),
    ("DELETE", "/v1/models", None, 405, "DELETE is not allowed"),
])
def test_bad_requests_get_the_matching_status_and_a_json_body_naming_the_problem(
        server: ServerProcess, method: str, path: str, body: Any, status: int, says: str) -> None:
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    got, _, raw = http(server, method, path, data)
    answer = json.loads(raw)
    assert got == status, answer
    assert says in answer["error"], answer
    assert set(answer) == {"error", "code"}
    # The server keeps serving.
    assert http_json(server, "POST", "/v1/models/wn-frozen:classify", {"texts": ["a dog"]})[0] == 200


def _read_until(connection: socket.socket, marker: bytes) -> bytes:
    """What the server sends on a raw connection, up to `marker` (the server closing first fails)."""
    reply = b""
    while marker not in reply:
        chunk = connection.recv(4096)
        assert chunk, reply
        reply += chunk
    return reply


def test_a_full_queue_is_429_and_a_huge_body_is_413(trained: Trained, tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "s.log", "--max-queue-size", "2")
    try:
        status, answer = http_json(proc, "POST", "/v1/models/wn-frozen:classify", {"texts": ["a", "b", "c"]})
        assert (status, answer["code"]) == (429, "RESOURCE_EXHAUSTED") and "max_queue_size=2" in answer["error"]
        # A body over the limit is refused from its Content-Length, before it is sent.
        with socket.create_connection(("127.0.0.1", proc.http_port), timeout=30) as client:
            client.sendall(b"POST /v1/models/wn-frozen:classify HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: 41943040\r\n\r\n")
            reply = _read_until(client, b"}")
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"exceeds the request limit of 4194304 bytes (max_request_bytes)" in reply
        assert http_json(proc, "POST", "/v1/models/wn-frozen:classify", {"texts": ["a"]})[0] == 200
    finally:
        assert proc.stop() == 0


def test_a_client_that_stops_sending_its_body_gets_408_and_others_are_served(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as slow:
        slow.sendall(b"POST /v1/models/wn-frozen:classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"texts\": [")
        # Meanwhile other callers are answered.
        assert http_json(server, "POST", "/v1/models/wn-frozen:classify", {"texts": ["a dog"]})[0] == 200
        reply = _read_until(slow, b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_the_openapi_document_lists_exactly_the_routes_served() -> None:
    from tlserve.server.core.dataplane import DataPlane
    from tlserve.server.core.routing import RoutingTable
    from tlserve.server.frontends.http.app import build_app
    from tlserve.server.frontends.http.openapi import document
    from tlserve.server.settings import ServerSettings

    app = build_app(DataPlane(RoutingTable(), ServerSettings()), ServerSettings(), None)
    served = {(route.method.lower(), route.resource.canonical) for route in app.router.routes()  # type: ignore[union-attr]
              if route.method != "HEAD"}
    documented = {(method, path) for path, item in document()["paths"].items() for method in item}
    assert served == documented
    ids = [op["operationId"] for item in document()["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_curl_classifies_through_the_json_mirror(server: ServerProcess) -> None:
    out = subprocess.run(["curl", "-sS", "-X", "POST", f"http://127.0.0.1:{server.http_port}/v1/models/wn-frozen:classify",
                          "-H", "Content-Type: application/json", "-d", '{"texts": ["a young horse"], "topK": 1}'],
                         capture_output=True, text=True, timeout=60, check=True)
    answer = json.loads(out.stdout)
    with grpc.insecure_channel(server.target) as channel:
        native = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="wn-frozen",
                                                                             texts=["a young horse"], top_k=1))
    assert answer["results"][0]["labels"][0]["label"] == native.results[0].labels[0].label


def test_bearer_token_and_tls_on_the_http_port(trained: Trained, tmp_path: Path) -> None:
    from certificates import certificate, key_pem, pem

    ca = certificate("tlserve test CA", None, ca=True)
    leaf = certificate("localhost", ca)
    (tmp_path / "ca.pem").write_bytes(pem(ca[0]))
    (tmp_path / "cert.pem").write_bytes(pem(leaf[0]))
    (tmp_path / "key.pem").write_bytes(key_pem(leaf[1]))
    proc = start_server(trained.repository, tmp_path / "s.log", "--tls-cert", str(tmp_path / "cert.pem"),
                        "--tls-key", str(tmp_path / "key.pem"), "--auth-token", "s3cret-token", wait=False)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.check_hostname = False
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if http(proc, "GET", "/v2/health/ready", scheme="https", context=context)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline and proc.process.poll() is None, proc.output()
            time.sleep(0.1)
        body = {"texts": ["a dog"]}
        status, headers, _ = http(proc, "POST", "/v1/models/wn-frozen:classify", body, scheme="https",
                                  context=context)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert http(proc, "POST", "/v1/models/wn-frozen:classify", body, {"Authorization": "Bearer s3cret-tokem"},
                    scheme="https", context=context)[0] == 401
        assert http(proc, "POST", "/v1/models/wn-frozen:classify", body, {"Authorization": "Bearer s3cret-token"},
                    scheme="https", context=context)[0] == 200
        with pytest.raises((urllib.error.URLError, http_client.HTTPException, ConnectionError)):
            http(proc, "GET", "/v2/health/live")  # plaintext is refused on a TLS port
    finally:
        assert proc.stop() == 0


def test_tritonclients_http_client_gets_the_grpc_answers(server: ServerProcess, interop_python: Path,
                                                           tmp_path: Path) -> None:
    texts = sample_texts(1000)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    subprocess.run([str(interop_python), str(INTEROP / "triton_check.py"), "--protocol", "http", "--url",
                    f"127.0.0.1:{server.http_port}", "--model", "wn-finetune", "--texts", str(tmp_path / "texts.json"),
                    "--out", str(tmp_path / "out.json")], check=True, timeout=300)
    seen = json.loads((tmp_path / "out.json").read_text())
    labels, expected = native_probabilities(server, "wn-finetune", texts)
    assert seen["server_live"] and seen["server_ready"] and seen["model_ready"]
    assert seen["unknown_model_ready"] is False
    assert "binary_tensor_data" in seen["server_metadata"]["extensions"]
    assert seen["model_metadata"]["outputs"][0]["shape"] == [-1, len(labels)]
    assert seen["response_model_version"] == "1"
    got = seen["probabilities"]
    assert len(got) == 1000
    worst = max(abs(a - b) for ra, rb in zip(got, expected, strict=True) for a, b in zip(ra, rb, strict=True))
    print(f"tritonclient HTTP vs gRPC, 1,000 texts: max |dp| = {worst:.3g}")
    assert worst <= 1e-6
    best = [labels[max(range(len(row)), key=row.__getitem__)] for row in expected]
    assert seen["labels"] == best
    assert seen["json_probabilities"] == seen["binary_probabilities_same_request"]
    assert seen["json_labels"] == best[:20]
    for row, answer in zip(expected[:3], seen["classification"], strict=True):
        top = sorted(range(len(row)), key=lambda j: -row[j])[:2]
        assert [entry.split(":", 2)[1:] for entry in answer] == [[str(j), labels[j]] for j in top]
    assert seen["unknown_model_error"]["status"] == "404"


def test_every_worker_serves_http(trained: Trained, tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "s.log", "--workers", "2")
    try:
        for _ in range(20):
            assert http_json(proc, "POST", "/v1/models/wn-frozen:classify", {"texts": ["a dog"]})[0] == 200
        listening = [line for line in proc.output().splitlines() if f"127.0.0.1:{proc.http_port} (HTTP)" in line]
        pids = {line.split("[", 1)[1].split("]", 1)[0] for line in listening}
        assert len(pids) == 2, listening
    finally:
        assert proc.stop() == 0


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
        server: ServerProcess, interop_python: Path, tmp_path: Path) -> None:
    """Property-based requests generated from /openapi.json (schemathesis, in the interop venv): every answer
    must match the document (status, content type, headers, body schema) and none may be a 5xx.

    Its positive-data check is left out: the document cannot say that a shape must equal the number of
    texts, that a body's model must be the path's, or where the limits lie, and such requests get a 400."""
    generated = 0
    for name, parameters in (("served", '"path.model" = "wn-frozen"\n"path.version" = "1"\n'), ("random", "")):
        config = tmp_path / f"{name}.toml"
        config.write_text(f"[parameters]\n{parameters}" if parameters else "")
        run = subprocess.run([str(interop_python.parent / "schemathesis"), "--config-file", str(config), "run",
                              f"http://127.0.0.1:{server.http_port}/openapi.json", "--max-examples", "20",
                              "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--seed", "7"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-6000:]
        counts = [line for line in run.stdout.splitlines() if " generated, " in line]
        assert counts and "passed" in counts[-1], run.stdout[-2000:]
        generated += int(counts[-1].split()[0])
    print(f"schemathesis: {generated} generated requests, all passed")
    assert generated >= 600
