"""Explanations on request, served: gRPC, its JSON mirror and the Python client give the in-process
explanation; a call without `explain` is answered as before; limits are INVALID_ARGUMENT naming them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from tlserve.client import Classifier
from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.contract.oip import grpc_predict_v2_pb2_grpc as v2_grpc
from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.core.explanations import explain
from tlserve.core.scorer import Scorer

from conftest import ServerProcess, Trained, metric, sample_texts

TEXTS = [*sample_texts(12), "", "x", "a a a cat cat dog"]


def _post(server: ServerProcess, model: str, body: dict[str, Any], path: str = "/v1/models/{}:classify"
          ) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path.format(model)}",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("model", ["wn-finetune", "wn-frozen"])
def test_served_explanations_are_the_in_process_ones_on_grpc_json_and_the_client(server: ServerProcess,
                                                                                 trained: Trained, model: str) -> None:
    published = trained.finetune if model == "wn-finetune" else trained.frozen
    expected = explain(Scorer.open(published.path), TEXTS, words=3)
    explained_before = metric(server, "tlserve_explained_texts_total", model=model)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        answer = stub.Classify(pb.ClassifyRequest(model=model, texts=TEXTS, top_k=2, explain=3))
        plain = stub.Classify(pb.ClassifyRequest(model=model, texts=TEXTS, top_k=2))
    # The JSON mirror: the message gRPC returns, in protobuf's own JSON.
    status, body = _post(server, model, {"texts": TEXTS, "topK": 2, "explain": 3})
    assert status == 200, body
    assert body == json_format.MessageToDict(answer)
    for result, mine in zip(answer.results, expected, strict=True):
        assert result.explanation.label == mine.label == result.labels[0].label
        assert [w.word for w in result.explanation.words] == [w.word for w in mine.words]
        assert [w.count for w in result.explanation.words] == [w.count for w in mine.words]
        for served, local in zip(result.explanation.words, mine.words, strict=True):
            assert served.contribution == pytest.approx(local.contribution, abs=1e-6)
    assert len(answer.results[12].explanation.words) == 0  # "" has no words; "x" has one
    assert [w.word for w in answer.results[13].explanation.words] == ["x"]
    assert {w.word: w.count for w in answer.results[14].explanation.words} == {"a": 3, "cat": 2, "dog": 1}
    # Without explain: no explanation, and the rest of the answer as with it.
    assert not any(result.HasField("explanation") for result in plain.results)
    for with_it, without in zip(answer.results, plain.results, strict=True):
        with_it.ClearField("explanation")
        assert with_it == without
    # The client: 40 texts go as requests of at most 32 (the server's limit with explain), every one explained.
    with Classifier(server.target, model=model) as client:
        many = client.classify(sample_texts(40), explain=2)
    assert len(many) == 40 and all(c.explanation is not None and c.explanation.label == c.label for c in many)
    assert all(len(c.explanation.words) == 2 for c in many if c.explanation and c.token_count >= 2)
    assert many[0].to_dict()["explanation"][0]["word"] == many[0].explanation.words[0].word  # type: ignore[union-attr]
    with Classifier(server.target, model=model) as client:
        streamed = [c for batch in client.classify_stream([TEXTS[:5], TEXTS[5:]], explain=3) for c in batch]
    for streamed_one, mine in zip(streamed, expected, strict=True):  # the stream's answers explained too
        assert streamed_one.explanation is not None and streamed_one.explanation.label == mine.label
        assert [(w.word, w.count) for w in streamed_one.explanation.words] == [(w.word, w.count) for w in mine.words]
    # Counted: the gRPC call, the JSON call, the client's 40 texts and the stream (the plain call is not).
    assert metric(server, "tlserve_explained_texts_total", model=model) - explained_before == 3 * len(TEXTS) + 40
    assert metric(server, "tlserve_stage_seconds_count", model=model, stage="explain") >= 4


def test_explain_over_its_limits_is_refused_naming_the_limit(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for request, limit in ((pb.ClassifyRequest(model="wn-frozen", texts=["a cat"], explain=65), "limit is 64"),
                               (pb.ClassifyRequest(model="wn-frozen", texts=["a cat"] * 33, explain=1), "at most 32")):
            with pytest.raises(grpc.RpcError) as raised:
                stub.Classify(request)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "explain" in (raised.value.details() or "") and limit in (raised.value.details() or "")
    status, body = _post(server, "wn-frozen", {"texts": ["a cat"], "explain": 65})
    assert status == 400 and "explain" in json.dumps(body) and "64" in json.dumps(body)
    status, body = _post(server, "wn-frozen", {"texts": ["a cat"], "explain": "three"})
    assert status == 400 and "explain" in json.dumps(body)


def test_the_open_inference_protocol_gives_the_same_explanations_when_the_output_is_named(server: ServerProcess
                                                                                          ) -> None:
    texts = sample_texts(5)
    with grpc.insecure_channel(server.target) as channel:
        native = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="wn-frozen", texts=texts,
                                                                             explain=3))
        expected = [json_format.MessageToDict(result.explanation) for result in native.results]
        inference = v2_grpc.GRPCInferenceServiceStub(channel)
        text_input = v2.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[len(texts)],
            contents=v2.InferTensorContents(bytes_contents=[t.encode() for t in texts]))
        named = v2.ModelInferRequest.InferRequestedOutputTensor(
            name="explanation", parameters={"explain": v2.InferParameter(int64_param=3)})
        answer = inference.ModelInfer(v2.ModelInferRequest(model_name="wn-frozen", inputs=[text_input],
                                                           outputs=[named, {"name": "label"}]))
        assert [json.loads(e) for e in answer.outputs[0].contents.bytes_contents] == expected
        plain = inference.ModelInfer(v2.ModelInferRequest(model_name="wn-frozen", inputs=[text_input]))
        assert [o.name for o in plain.outputs] == ["probabilities", "label"]  # only when named
        metadata = inference.ModelMetadata(v2.ModelMetadataRequest(name="wn-frozen"))
        assert "explanation" in [o.name for o in metadata.outputs]
    status, body = _post(server, "wn-frozen", {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
        "outputs": [{"name": "explanation", "parameters": {"explain": 3}}]}, "/v2/models/{}/infer")
    assert status == 200, body
    assert [json.loads(e) for e in body["outputs"][0]["data"]] == expected
    status, body = _post(server, "wn-frozen", {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a cat"]}],
        "outputs": [{"name": "explanation", "parameters": {"explain": 0}}]}, "/v2/models/{}/infer")
    assert status == 400 and "explain" in json.dumps(body)
