"""Hostile and odd input against a real server: it never crashes or hangs, answers with the
right status, and every distribution it returns is finite and sums to 1 (hypothesis)."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

from conftest import ServerProcess

MAX_TEXT_BYTES = 16384
MAX_TEXTS = 1024

# Every Unicode category but lone surrogates (not encodable as UTF-8, so not sendable).
characters = st.characters(exclude_categories=("Cs",))
odd_texts = st.one_of(
    st.text(characters, max_size=200),
    st.text(st.sampled_from(" \t\n\r\u00a0\u2003\u200b"), max_size=50),  # only whitespace
    st.text(st.sampled_from("!?.,;:-—…«»()[]{}@#$%^&*"), max_size=50),  # only punctuation
    st.text(st.sampled_from("\u0301\u0308\u20dd\u0489"), max_size=50),  # combining marks
    st.text(st.sampled_from("שלום مرحبا \u200f\u202e"), max_size=80),  # right-to-left, overrides
    st.text(st.sampled_from("🐱🙂👍🏽🇫🇷\x00"), max_size=40),  # emoji, NUL
    st.builds(lambda c, n: c * n, st.sampled_from("aé猫🐱"), st.integers(1000, 5000)),  # very long words
    st.builds(lambda n: "a" * n, st.integers(MAX_TEXT_BYTES - 2, MAX_TEXT_BYTES + 2)),  # at and over the limit
)


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> pb_grpc.ClassifierStub:
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)])
    return pb_grpc.ClassifierStub(channel)


def expected_status(texts: list[str]) -> grpc.StatusCode:
    if not texts or len(texts) > MAX_TEXTS:
        return grpc.StatusCode.INVALID_ARGUMENT
    if any(len(text.encode("utf-8")) > MAX_TEXT_BYTES for text in texts):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.OK


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts=st.lists(odd_texts, min_size=0, max_size=6), model=st.sampled_from(["wn-frozen", "wn-finetune"]),
       top_k=st.integers(0, 12))
def test_arbitrary_texts_get_a_valid_answer_or_the_right_status(
    stub: pb_grpc.ClassifierStub, texts: list[str], model: str, top_k: int
) -> None:
    request = pb.ClassifyRequest(model=model, texts=texts, top_k=top_k)
    try:
        response = stub.Classify(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == expected_status(texts), exc.details()
        assert exc.code() != grpc.StatusCode.OK
        return
    assert expected_status(texts) == grpc.StatusCode.OK
    assert len(response.results) == len(texts)
    for result in response.results:
        probabilities = [item.probability for item in result.labels]
        assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities)
        assert len(probabilities) == (10 if top_k in (0,) or top_k >= 10 else top_k)
        if top_k == 0 or top_k >= 10:
            assert abs(sum(probabilities) - 1.0) <= 1e-5
        assert 0.0 <= result.oov_fraction <= 1.0


@pytest.mark.parametrize("count", [MAX_TEXTS, MAX_TEXTS + 1])
def test_text_count_at_and_over_the_limit(stub: pb_grpc.ClassifierStub, count: int) -> None:
    request = pb.ClassifyRequest(model="wn-frozen", texts=["a cat"] * count)
    if count <= MAX_TEXTS:
        assert len(stub.Classify(request, timeout=30).results) == count
    else:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300))
def test_random_bytes_on_the_wire(server: ServerProcess, payload: bytes) -> None:
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/tlserve.v1.Classifier/Classify", request_serializer=None,
                                   response_deserializer=None)
        try:
            call(payload, timeout=30)
        except grpc.RpcError as exc:
            # Unparseable bytes, or a parseable request naming no model / no texts.
            assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), exc.details()
    assert server.process.poll() is None, "the server died"
