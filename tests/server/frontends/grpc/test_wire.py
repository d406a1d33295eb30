"""The hand-written ClassifyResponse encoding parses to exactly the message the protobuf API builds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.wire import varint
from tlserve.core.ranking import rank
from tlserve.server.core.dataplane import RankedAnswer
from tlserve.server.core.routing import LabelSet
from tlserve.server.frontends.grpc import wire


def encode(labels: list[str], model: str, version: int, probabilities: np.ndarray, top_k: int, tokens: list[int],
           oov: list[float], request_id: str) -> bytes:
    """The bytes the native front end sends for this answer (ranked by the serving core's `rank`)."""
    return wire.encode(RankedAnswer(model, version, LabelSet(labels), probabilities, rank(probabilities, top_k),
                                    np.array(tokens, dtype=np.int32), np.array(oov, dtype=np.float32), request_id))


def reference(model: str, version: int, labels: list[str], top: np.ndarray, order: np.ndarray, tokens: list[int],
              oov: list[float], request_id: str) -> pb.ClassifyResponse:
    """The response built through the protobuf message API."""
    return pb.ClassifyResponse(
        model=model, version=version, request_id=request_id,
        results=[pb.TextResult(labels=[pb.LabelProbability(label=labels[j], probability=float(p))
                                       for j, p in zip(row, probs, strict=True)],
                               token_count=t, oov_fraction=o)
                 for row, probs, t, o in zip(order.tolist(), top.tolist(), tokens, oov, strict=True)],
    )


@settings(max_examples=300, deadline=None)
@given(
    labels=st.lists(st.text(min_size=1, max_size=150), min_size=1, max_size=12, unique=True),
    n=st.integers(1, 40),
    k=st.integers(0, 12),
    model=st.text(max_size=40),
    version=st.sampled_from([0, 1, 127, 128, 2**40]),
    request_id=st.text(max_size=20),
    seed=st.integers(0, 2**31),
)
def test_encoded_bytes_parse_to_the_api_built_message(labels: list[str], n: int, k: int, model: str, version: int,
                                                       request_id: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(len(labels)), size=n).astype(np.float32)
    probabilities[rng.random(probabilities.shape) < 0.1] = 0.0  # exact zeros are written explicitly
    if len(labels) > 2:  # exact ties between non-zero probabilities keep label order
        probabilities[rng.random(n) < 0.3, 2] = probabilities[0, 1]
    top_k = k
    k = len(labels) if k == 0 or k >= len(labels) else k
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(probabilities, order, axis=1)
    tokens = rng.choice([0, 1, 300, 70_000], size=n).tolist()
    oov = rng.choice([0.0, 0.25, 1 / 3, 1.0], size=n).tolist()
    encoded = encode(labels, model, version, probabilities, top_k, tokens, oov, request_id)
    assert pb.ClassifyResponse.FromString(encoded) == reference(model, version, labels, top, order, tokens, oov,
                                                                 request_id)


def test_large_responses_take_the_vectorised_path_and_match() -> None:
    labels = [f"noun.label{i}" for i in range(10)] + ["ünïcödé", "x" * 200]
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(len(labels)), size=300).astype(np.float32)
    probabilities[::7, 3] = probabilities[::7, 4]  # ties
    order = np.argsort(-probabilities, axis=1, kind="stable")
    top = np.take_along_axis(probabilities, order, axis=1)
    tokens, oov = list(range(300)), [i / 300 for i in range(300)]
    encoded = encode(labels, "m", 3, probabilities, 0, tokens, oov, "r")
    assert pb.ClassifyResponse.FromString(encoded) == reference("m", 3, labels, top, order, tokens, oov, "r")


def test_varint_matches_protobuf() -> None:
    for value in (1, 127, 128, 300, 16_383, 16_384, 2**32, 2**63):
        message = pb.ClassifyRequest(version=value)
        assert message.SerializeToString() == b"\x10" + varint(value)
    assert varint(0) == b"\x00"
