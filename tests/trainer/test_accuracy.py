"""Accuracy targets against the peers over repeated seeded splits (slow: `bash scripts/test.sh --slow`).

Each row runs `tlserve evaluate` on a real task: 5 seeded stratified splits (test 20 %, then
the label budget, then validation 10 %), tlserve's default mode and the peers (TF-IDF +
logistic regression, fastText, fastText with the same vectors), each peer on its own
natural input and tuning. The default mode's mean accuracy must be at least the best
peer's mean, and its calibrated probabilities' ECE at most 0.03 and no worse than that peer's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tlserve.trainer.config import TrainConfig
from tlserve.trainer.evaluate import EvaluateConfig, run
from tlserve.trainer.fetch_data import prepare

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(4 * 3600)]


@pytest.fixture(scope="module")
def data() -> dict[str, Path]:
    return prepare(ROOT / "data", ["wordnet", "spam", "reviews", "news-zh"])


@pytest.mark.parametrize(
    ("task", "fraction"),
    [("wordnet", 0.01), ("wordnet", 0.1), ("spam", 0.1), ("reviews", 0.1), ("news-zh", 0.1)],
)
def test_default_mode_matches_or_beats_the_best_peer_over_five_splits(data: dict[str, Path], task: str,
                                                                      fraction: float, tmp_path: Path) -> None:
    chinese = task == "news-zh"
    train = TrainConfig(data=data[task], vectors=data["zh-vectors" if chinese else "vectors"], repository=tmp_path,
                        model=task, train_fraction=fraction, tokenizer="jieba" if chinese else "latin",
                        progress=False)
    result = run(EvaluateConfig(train, repeats=5, modes=["finetune"]))
    summary, paired = result["summary"]["systems"], result["summary"]["paired"]
    print(task, fraction, {name: round(s["accuracy"]["mean"], 4) for name, s in summary.items()}, paired)
    default, best = summary[paired["default"]], summary[paired["best_peer"]]
    assert default["accuracy"]["mean"] >= best["accuracy"]["mean"], paired
    assert default["ece"]["mean"] <= 0.03, default["ece"]
    assert default["ece"]["mean"] <= best["ece"]["mean"], (default["ece"], best["ece"])
