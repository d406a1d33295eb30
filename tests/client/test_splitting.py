"""The clients split a list of texts longer than the server's limits into requests under them, send them
one after another under one deadline, and give the answers back in order. In-process server, tiny model."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import grpc
import pytest

from tlserve.client import AsyncClassifier, Classifier
from tlserve.client.classifier import split
from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.server.in_thread import running

from conftest import tiny_repository


def _texts(n: int) -> list[str]:
    """Text i has i % 37 + 1 tokens: its token count tells its place."""
    return [" ".join(["dog"] * (i % 37 + 1)) for i in range(n)]


def test_split_keeps_order_and_both_limits() -> None:
    texts = ["a" * 1000] * 10 + ["b"] * 500
    ranges = split(texts, 100, 4096)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(texts)
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(ranges))
    for start, end in ranges:
        assert end - start <= 100
        assert end - start == 1 or 1024 + sum(len(t) + 6 for t in texts[start:end]) <= 4096
    assert split(["x" * 10_000], 100, 4096) == [(0, 1)]  # too long alone: sent alone, the server names it


def test_long_lists_are_split_by_the_servers_own_limits_sync_and_async(tiny_store: Path, tmp_path: Path) -> None:
    repository = tiny_repository(tmp_path / "repo", tiny_store)
    with running(repository, tmp_path, max_texts_per_request=100, max_request_bytes=64 << 10) as server:
        texts = _texts(1000)
        with grpc.insecure_channel(server.target) as channel:  # as one request: over the limit, refused
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="tiny", texts=texts), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # 77 KB: over 64 KiB
        with Classifier(server.target, model="tiny", retries=0) as client:
            results = client.classify(texts)
            assert [r.token_count for r in results] == [len(t.split()) for t in texts]
            long_texts = ["tree " * 3000] * 40  # 15 KB each: a few per 64 KiB request
            assert len(client.classify(long_texts)) == 40

        async def asynchronous() -> list[int]:
            async with AsyncClassifier(server.target, model="tiny", retries=0) as client:
                return [r.token_count for r in await client.classify(texts)]

        assert asyncio.run(asynchronous()) == [len(t.split()) for t in texts]
