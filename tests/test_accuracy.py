"""Accuracy targets of transfer learning against the peers (slow: `bash scripts/test.sh --slow`).

Each row trains with `--compare` on the real task (GloVe-50d, 80/20 stratified split, seed 0,
training labels subsampled with seed 0) and checks that the best tlserve mode is at least as
accurate on the test split as the best peer of the same run (TF-IDF + logistic regression,
fastText plain / bigrams / pretrained).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlserve.trainer.config import TrainConfig
from tlserve.trainer.demo import prepare
from tlserve.trainer.train import train

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def data() -> dict[str, Path]:
    return prepare(ROOT / "data", ["wordnet", "spam"])


@pytest.mark.parametrize(
    ("task", "fraction"),
    [("wordnet", 0.01), ("wordnet", 0.1), ("wordnet", 1.0), ("spam", 0.1), ("spam", 1.0)],
)
def test_best_tlserve_mode_matches_or_beats_the_best_peer(data: dict[str, Path], task: str, fraction: float,
                                                          tmp_path: Path) -> None:
    config = TrainConfig(data=data[task], vectors=data["vectors"], repository=tmp_path, model=task,
                         train_fraction=fraction, compare=True, learning_curve=False, progress=False)
    result = train(config)
    comparison = json.loads((result.path / "report.json").read_text())["comparison"]
    summary = {name: round(scores["accuracy"], 4) for name, scores in comparison["systems"].items()}
    print(task, fraction, summary)
    assert comparison["best_peer"] is not None
    assert comparison["best_tlserve"] >= comparison["best_peer"], summary
