"""One text's path through a real server (`tlserve request-path`): each module entered once by the call."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlserve.bench.request_path import SCENARIOS, measure, render
from tlserve.core.encoders import chosen_encoder
from tlserve.server.in_thread import running

from conftest import tiny_repository

# What every classification passes through, in this order, whatever the protocol.
CORE_PATH = ["tlserve.server.core.dataplane", "tlserve.server.core.routing", "tlserve.server.core.batching",
             "tlserve.server.core.limits", "tlserve.core.scorer", "tlserve.core.features",
             "tlserve.core.preprocessing", "tlserve.core.lexicon", "tlserve.core.ranking",
             "tlserve.server.core.observe"]
ENCODERS = {"Classifier/Classify": "tlserve.server.frontends.grpc.wire",
            ":classify": "tlserve.server.frontends.http.answers",
            "GRPCInferenceService/ModelInfer": "tlserve.server.frontends.grpc.oip_messages",
            "/infer": "tlserve.server.frontends.http.answers"}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_text_enters_each_module_once_on_every_protocol(scenario: str, tiny_store: Path, tmp_path: Path) -> None:
    repository = tiny_repository(tmp_path / "repo", tiny_store, "tiny")
    with running(repository, tmp_path, **SCENARIOS[scenario]) as server:
        paths = measure(server, "tiny", scenario)
    assert len(paths) == 4
    for path in paths:
        listing = render(path)
        assert path.twice("call") == [], listing
        modules = [entry.module for entry in path.entries]
        # The path holds the core's stages in order, and the protocol's own encoder after the ranking.
        # The compiled encoder does the lexicon's work (n-grams, weights) in C: no Python module is entered.
        core_path = [m for m in CORE_PATH if not (m == "tlserve.core.lexicon" and chosen_encoder() == "native")]
        assert [m for m in modules if m in CORE_PATH] == core_path, listing
        encoder = next(module for suffix, module in ENCODERS.items() if path.protocol.split(" (")[0].endswith(suffix)
                       or suffix in path.protocol)
        assert modules.index(encoder) == modules.index("tlserve.core.ranking") + 1, listing
        ran_in_batcher = {entry.module for entry in path.entries if entry.worker == "batcher"}
        if scenario == "queued":  # the batching task ran the model for the call
            assert "tlserve.core.scorer" in ran_in_batcher, listing
        else:  # a lone call runs in its own task
            assert not ran_in_batcher, listing
