"""An explanation as JSON, in protobuf's JSON mapping of tlserve.v1's Explanation: the JSON mirror's
``explanation`` field, and each element of the Open Inference Protocol's ``explanation`` output."""

from __future__ import annotations

from typing import Any

import numpy as np

from tlserve.core.explanations import Explanation


def explanation_json(why: Explanation) -> dict[str, Any]:
    """Floats as float32's shortest decimal and zero values left out, as protobuf's JSON printer writes them."""
    words = []
    for word in why.words:
        entry: dict[str, Any] = {"word": word.word}
        if word.contribution:
            entry["contribution"] = float(str(np.float32(word.contribution)))
        entry["count"] = word.count
        words.append(entry)
    return {"label": why.label, **({"words": words} if words else {})}
