"""The training-time bench times each accuracy row with that row's own task, vectors and label budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlserve.bench.accuracy import rows
from tlserve.bench.training_time import main, train_config


def test_a_row_is_timed_on_its_own_task_vectors_and_budget() -> None:
    known = rows(Path("data"))
    news = train_config(known["news-zh-10"], seed=1000)
    assert (news.data.name, news.vectors.name, news.train_fraction, news.tokenizer, news.seed) == (
        "thucnews-headlines.csv", "zh-registry-w2v-100d", 0.1, "jieba", 1000)
    adapted = train_config(known["wordnet-1-adapted"], seed=1000)
    assert adapted.vectors.name == "glove-6b-50d-wordnet-adapted" and adapted.train_fraction == 0.01


def test_rows_without_the_peer_are_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--rows", "spam-10-cap256", "no-such-row"])
    assert "no timed row named spam-10-cap256, no-such-row" in capsys.readouterr().err
