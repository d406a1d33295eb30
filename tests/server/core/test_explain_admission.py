"""Explanations cost a scoring per word: they run one call at a time, and plain calls are answered meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tlserve.core.explanations import Explanation
from tlserve.server.core import dataplane
from tlserve.server.core.dataplane import ClassifyCall, RankedAnswer

from conftest import BatchRecorder, make_plane


def test_explanations_run_one_call_at_a_time_and_plain_calls_pass_them(monkeypatch: pytest.MonkeyPatch) -> None:
    gate, lock = threading.Event(), threading.Lock()
    running: list[int] = []
    peak = [0]

    def held_explain(scorer: Any, texts: list[str], words: int) -> list[Explanation]:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        gate.wait(60)  # released by the test; the timeout only ends a hang
        with lock:
            running.pop()
        return [Explanation("one", 1.0, []) for _ in texts]

    monkeypatch.setattr(dataplane, "explain", held_explain)

    def answer(ranked: RankedAnswer) -> RankedAnswer:
        return ranked

    async def scenario() -> None:
        try:
            await calls()
        finally:
            gate.set()  # a failed check must not leave the threads waiting

    async def calls() -> None:
        plane = make_plane(BatchRecorder())
        explained = [asyncio.ensure_future(plane.classify(ClassifyCall("m", 0, ["a b c"], "Classify", explain=2),
                                                          answer)) for _ in range(3)]
        for _ in range(6000):  # until the first explanation holds its thread (an event this test controls)
            if running:
                break
            await asyncio.sleep(0.01)
        assert running == [1]
        plain = await plane.classify(ClassifyCall("m", 0, ["x"], "Classify"), answer)
        assert plain.explanations is None and not any(call.done() for call in explained)
        assert running == [1]  # the other two wait for the first, not beside it
        gate.set()
        answers = await asyncio.gather(*explained)
        assert all(a.explanations is not None and a.explanations[0].label == "one" for a in answers)

    asyncio.run(scenario())
    assert peak[0] == 1
