"""Bad files on disk never take a server down: a store cut or rewritten under a running server, a store
that does not match its fingerprint, a graph whose tables are not the bundle's, a model that answers NaN.

Real `tlserve serve` processes over tiny models (each on a store of its own where the test needs it).
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tlserve.client import Classifier, ClassifierError
from tlserve.core.vector_store import VECTORS, VectorStore

from conftest import ServerProcess, metric, start_server, wait_until
from tiny_models import make_model, make_store, sample_texts


def _two_stores(tmp_path: Path) -> tuple[Path, VectorStore, VectorStore]:
    repository = tmp_path / "repo"
    first, second = make_store(tmp_path / "store-a", seed=1), make_store(tmp_path / "store-b", seed=2)
    make_model(repository, "on-a", first)
    make_model(repository, "on-b", second)
    return repository, first, second


def _served_vectors(repository: Path, store: VectorStore) -> Path:
    return repository / "_stores" / store.fingerprint / VECTORS


def _answers(server: ServerProcess, model: str) -> list[str]:
    """Labels for every sample text, in calls of 50 (every word of the store is read)."""
    with Classifier(server.target, model=model, retries=0, timeout=30) as client:
        texts = sample_texts()
        return [result.label for start in range(0, len(texts), 50)
                for result in client.classify(texts[start:start + 50])]


def test_a_store_cut_under_a_running_server_takes_only_its_models_out_of_service(tmp_path: Path) -> None:
    repository, first, second = _two_stores(tmp_path)
    server = start_server(repository, tmp_path / "server.log", "--poll-seconds", "0.2")
    try:
        before = _answers(server, "on-a")
        served = _served_vectors(repository, first)
        original = served.read_bytes()
        with open(served, "r+b") as handle:  # what `cp` over the file in place does first
            handle.truncate(len(original) // 3)
        with Classifier(server.target, model="on-a", retries=0, timeout=30) as client:
            texts = sample_texts()
            for start in range(0, len(texts), 50):  # every word of the store, cut rows included: no crash
                try:
                    client.classify(texts[start:start + 50])
                except ClassifierError as exc:
                    assert exc.code.name == "UNAVAILABLE", exc  # once the scan has seen the cut
        assert server.process.poll() is None, server.output()
        with Classifier(server.target, retries=0, timeout=30) as client:
            wait_until(lambda: client.health("tlserve.v1.Classifier/on-a") == "NOT_SERVING",
                       "the model on the cut store is NOT_SERVING")
            assert client.health("tlserve.v1.Classifier/on-b") == "SERVING"
            assert client.health() == "SERVING"
            with pytest.raises(ClassifierError) as refused:
                client.classify(["a small dog"], model="on-a")
            assert refused.value.code.name == "UNAVAILABLE" and str(served) in refused.value.details
        assert len(_answers(server, "on-b")) == len(sample_texts())  # the intact store still serves
        assert metric(server, "tlserve_store_broken", store=first.fingerprint[:12]) == 1
        assert metric(server, "tlserve_store_broken", store=second.fingerprint[:12]) == 0
        served.write_bytes(original)  # restored: the model serves again, with the answers it gave
        with Classifier(server.target, retries=0, timeout=30) as client:
            wait_until(lambda: client.health("tlserve.v1.Classifier/on-a") == "SERVING", "the model serves again")
        assert _answers(server, "on-a") == before
    finally:
        code = server.stop()
    assert code == 0, server.output()
    log = server.output()
    assert "on-a/1 is NOT_SERVING" in log and str(served) in log and "on-a/1 serves again" in log


def test_a_store_rewritten_at_its_size_is_refused_at_load_naming_the_file(tmp_path: Path) -> None:
    repository, first, _ = _two_stores(tmp_path)
    served = _served_vectors(repository, first)
    data = bytearray(served.read_bytes())
    header = len(data) - len(first) * first.dimension * 4
    data[header:] = np.random.default_rng(0).bytes(len(data) - header)  # same size, same header
    served.write_bytes(bytes(data))
    server = start_server(repository, tmp_path / "server.log")
    try:
        with Classifier(server.target, retries=0, timeout=30) as client:
            assert [model.name for model in client.models()] == ["on-b"]
            assert client.classify(["a small dog"], model="on-b")[0].labels
    finally:
        assert server.stop() == 0
    assert f"refused {repository / 'on-a' / '1'}" in server.output()
    assert f"{served}: sha256 does not match the store manifest" in server.output()


def test_a_graph_whose_lexical_table_is_not_the_lexicons_is_refused_at_load(tiny_store: Path, tmp_path: Path
                                                                           ) -> None:
    repository = tmp_path / "repo"
    store = VectorStore(tiny_store)
    make_model(repository, "good", store)
    short = make_model(repository, "short-table", store, lexicon_rows=150)  # 200 n-grams need 201 rows
    server = start_server(repository, tmp_path / "server.log")
    try:
        with Classifier(server.target, retries=0, timeout=30) as client:
            assert [model.name for model in client.models()] == ["good"]
    finally:
        assert server.stop() == 0
    assert f"{short / 'model.onnx'}: the graph's table for input 'lexicon_ids' has fewer than the 201 rows" \
        in server.output()


def test_no_answer_path_sends_a_non_finite_probability(tmp_path: Path) -> None:
    """A store whose vector for 'dog' is NaN (valid, fingerprinted: a broken import): every front end
    answers an error for a text with 'dog', never a NaN or a null probability."""
    words = ["a", "dog", "small", "tree"]
    vectors = np.ones((4, 16), dtype=np.float32)
    vectors[1] = np.nan
    from tlserve.core.vector_store import write_store

    write_store(tmp_path / "store", words, vectors, case="lower", source_name="nan", source_sha256="0" * 64)
    repository = tmp_path / "repo"
    make_model(repository, "nan", VectorStore(tmp_path / "store"))
    server = start_server(repository, tmp_path / "server.log")
    body = json.dumps({"texts": ["a small dog"]}).encode()
    try:
        with Classifier(server.target, model="nan", retries=0, timeout=30) as client:
            assert client.classify(["a small tree"])[0].labels  # finite: answered
            with pytest.raises(ClassifierError) as refused:
                client.classify(["a small dog"])
            assert refused.value.code.name == "INTERNAL" and "non-finite probability" in refused.value.details
        for path, payload in (("/v1/models/nan:classify", body),
                              ("/v2/models/nan/infer", json.dumps({"inputs": [{"name": "text", "shape": [1],
                                                                              "datatype": "BYTES",
                                                                              "data": ["a small dog"]}]}).encode())):
            request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=payload)
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=30)
            assert answer.value.code == 500 and b"non-finite probability" in answer.value.read()
        import grpc

        from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
        from tlserve.contract.oip import grpc_predict_v2_pb2_grpc as v2_grpc

        with grpc.insecure_channel(server.target) as channel:
            tensor = v2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(b"a small dog")
            with pytest.raises(grpc.RpcError) as refused_oip:
                v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    v2.ModelInferRequest(model_name="nan", inputs=[tensor]), timeout=30)
            assert refused_oip.value.code() == grpc.StatusCode.INTERNAL
    finally:
        assert server.stop() == 0


def test_a_payload_log_in_a_folder_that_does_not_exist_stops_the_start_with_its_path(tiny_store: Path,
                                                                                     tmp_path: Path) -> None:
    from conftest import tiny_repository

    missing = tmp_path / "no-such-folder" / "payload.jsonl"
    server = start_server(tiny_repository(tmp_path / "repo", tiny_store), tmp_path / "server.log",
                          "--payload-log", str(missing), wait=False)
    try:
        assert server.process.wait(60) == 1
    finally:
        server.process.kill()
    assert f"cannot write the payload log {missing} (--payload-log): No such file or directory" in server.output()
    assert not os.path.exists(missing.parent)
