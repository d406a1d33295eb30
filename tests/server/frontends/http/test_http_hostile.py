"""The HTTP port under hostile use: huge and compressed bodies, odd headers and paths, a flood of idle
connections. Each answer is a clear 4xx, the server's memory stays bounded, and nobody is locked out.

Against a real `tlserve serve` process on loopback (its memory and descriptors are the subject).
"""

from __future__ import annotations

import gzip
import http.client
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tlserve.client import Classifier

from conftest import (
    ServerProcess,
    idle_connections,
    open_file_room,
    start_server,
    stops_cleanly,
    tiny_repository,
    wait_until,
)

MAX_REQUEST_BYTES = 4 << 20


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("hostile-http")
    proc = start_server(tiny_repository(folder / "repo", tiny_store), folder / "server.log",
                        "--auth-token", "sesame")
    yield proc
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


def post(server: ServerProcess, path: str, body: bytes, headers: dict[str, str] | None = None,
         token: str | None = "sesame") -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    try:
        sent = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
                **(headers or {})}
        connection.request("POST", path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM): the kernel's own high-water mark, not a sample."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_body_of_millions_of_tiny_texts_is_refused_by_size_or_before_it_is_parsed(server: ServerProcess) -> None:
    huge = json.dumps({"texts": ["a"] * 2_000_000}).encode()  # 10 MB: over the request limit
    status, answer = post(server, "/v1/models/tiny:classify", huge)
    assert status == 413 and answer["code"] == "RESOURCE_EXHAUSTED", answer
    assert f"limit of {MAX_REQUEST_BYTES} bytes (max_request_bytes)" in answer["error"]
    # Under the byte limit, yet 600,000 texts: counted from the bytes, never parsed into strings.
    many = json.dumps({"texts": ["a"] * 600_000}).encode()
    assert len(many) < MAX_REQUEST_BYTES
    status, answer = post(server, "/v1/models/tiny:classify", many)
    assert status == 400 and "at least 600001 JSON strings" in answer["error"], answer
    assert "max_texts_per_request=1024" in answer["error"]
    # The Open Inference Protocol's binary tensor: refused from the declared shape, before its elements are read.
    header = json.dumps({"inputs": [{"name": "text", "shape": [600_000], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 * 600_000}}]}).encode()
    status, answer = post(server, "/v2/models/tiny/infer", header + b"\0" * (4 * 600_000),
                          {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "shape [600000] holds 600000 texts" in answer["error"], answer


def test_a_request_over_the_byte_limit_is_refused_on_both_ports_and_one_under_it_answers(
        server: ServerProcess) -> None:
    import grpc

    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

    long_text = "word " * 3276  # 16,380 bytes, within max_text_bytes
    over = [long_text] * 1023  # 16 MB: the old limits allowed it
    under = [long_text] * 200  # 3.3 MB
    status, answer = post(server, "/v1/models/tiny:classify", json.dumps({"texts": over}).encode())
    assert status == 413, answer
    status, answer = post(server, "/v1/models/tiny:classify", json.dumps({"texts": under}).encode())
    assert status == 200 and len(answer["results"]) == 200
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        metadata = [("authorization", "Bearer sesame")]
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(pb.ClassifyRequest(model="tiny", texts=over), timeout=60, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(stub.Classify(pb.ClassifyRequest(model="tiny", texts=under), timeout=60,
                                 metadata=metadata).results) == 200


def test_compressed_bodies_are_inflated_within_the_limit_and_bad_ones_are_4xx(server: ServerProcess) -> None:
    body = json.dumps({"texts": ["a small dog", "a tall tree"]}).encode()
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        status, answer = post(server, "/v1/models/tiny:classify", data, {"Content-Encoding": encoding})
        assert status == 200 and len(answer["results"]) == 2, (encoding, answer)
    bomb = gzip.compress(b" " * (256 << 20))  # 256 KB that inflate to 256 MB
    before = peak_rss_mb(server.process.pid)
    for _ in range(10):
        status, answer = post(server, "/v1/models/tiny:classify", bomb, {"Content-Encoding": "gzip"})
        assert status == 413 and "inflated" in answer["error"], answer
    grown = peak_rss_mb(server.process.pid) - before
    assert grown < 40, f"peak RSS grew by {grown:.0f} MB for bodies refused at {MAX_REQUEST_BYTES >> 20} MB"
    status, answer = post(server, "/v1/models/tiny:classify", body, {"Content-Encoding": "gzip"})
    assert status == 400 and "not valid gzip" in answer["error"], answer
    status, answer = post(server, "/v1/models/tiny:classify", gzip.compress(body)[:-12],
                          {"Content-Encoding": "gzip"})
    assert status == 400 and "ends before" in answer["error"], answer
    status, answer = post(server, "/v1/models/tiny:classify", body, {"Content-Encoding": "br"})
    assert status == 415 and "'br' is not supported" in answer["error"], answer


@pytest.mark.parametrize(("path", "headers", "status", "says"), [
    ("/v1/models/tiny/versions/%C2%B9:classify", {}, 400, "not a version number"),
    ("/v2/models/tiny/versions/%D9%A1/infer", {}, 400, "not a version number"),
    ("/v1/models/tiny:classify", {"Authorization": "Bearer \udcff\udcfe"}, 401, "bearer token"),
])
def test_odd_paths_and_headers_get_a_4xx_not_a_500(server: ServerProcess, path: str, headers: dict[str, str],
                                                   status: int, says: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.putrequest("POST", path, skip_accept_encoding=True)
    token = headers.get("Authorization", "Bearer sesame").encode("utf-8", "surrogateescape")
    connection.putheader("Authorization", token)
    # A well-formed body for the path's API: what is odd is the path or the header alone.
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a dog"]}]}
                      if path.startswith("/v2/") else {"texts": ["a dog"]}).encode()
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == status and says in answer["error"], answer


def test_the_page_is_never_framed_by_another_site(server: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_two_thousand_idle_http_connections_at_1024_descriptors_lock_nobody_out_and_are_closed(
        tiny_store: Path, tmp_path: Path) -> None:
    with open_file_room():
        server = start_server(tiny_repository(tmp_path / "repo", tiny_store), tmp_path / "server.log",
                              "--connection-idle-seconds", "5", launcher=["prlimit", "--nofile=1024:1024"])
        try:
            with idle_connections(server.http_port, 2000) as idle:
                with Classifier(server.target, model="tiny", retries=0, timeout=10) as client:
                    for _ in range(20):
                        assert client.classify(["a grpc call"])[0].labels
                for _ in range(20):
                    status, answer = post(server, "/v1/models/tiny:classify",
                                          json.dumps({"texts": ["an http call"]}).encode(), token=None)
                    assert status == 200, answer

                def all_closed() -> bool:
                    for sock in idle:
                        sock.setblocking(False)
                        try:
                            if sock.recv(1) != b"":
                                return False
                        except BlockingIOError:
                            return False  # still open
                        except OSError:
                            pass  # reset: closed
                    return True

                # The hang guard only: the server closes them after 5 s idle (or sooner, for newer ones).
                wait_until(all_closed, "the server closes idle HTTP connections", timeout=120)
        finally:
            stops_cleanly(server)
