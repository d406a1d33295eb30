"""`python -m tlserve.bench.model_cost`: two versions of a model side by side, per text, per batch, per head."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tlserve.bench import model_cost
from tlserve.core.lexicon import Lexicon
from tlserve.core.vector_store import VectorStore

from tiny_models import make_model, sample_texts


def test_both_versions_take_turns_and_the_ratios_come_from_the_medians(tiny_store: Path, tmp_path: Path) -> None:
    texts = sample_texts()
    tokens = [text.lower().split() for text in texts]
    store = VectorStore(tiny_store)
    before = make_model(tmp_path / "a", "words", store, lexicon=Lexicon.fit(tokens, 200))
    after = make_model(tmp_path / "b", "chars", store, lexicon=Lexicon.fit(tokens, 2000, units="words+chars"))
    data = tmp_path / "texts.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([text, "x"] for text in texts[:60])
    out = tmp_path / "cost.json"
    arguments = ["--before", str(before), "--after", str(after), "--data", str(data), "--out", str(out)]
    assert model_cost.main(arguments) == 0
    result = json.loads(out.read_text())
    heads = result["per_head"]
    assert (heads["before"]["lexicon_units"], heads["after"]["lexicon_units"]) == ("words", "words+chars")
    assert heads["after"]["lexicon_ngrams"] > heads["before"]["lexicon_ngrams"] == 200
    one = result["texts / one text"]
    assert one["calls"] == 60  # every text alone, through both versions
    assert result["texts / batch of 256"]["calls"] == 4  # one batch of all 60 texts, four times
    for stage in ("text_to_probabilities", "encode"):
        medians = one[stage]
        assert medians["ratio_p50"] == round(medians["after"]["p50_us"] / medians["before"]["p50_us"], 3)
