"""Texts of different lengths as one zero-padded array, the layout of every per-text graph input.

The featurizer (token ids) and the lexicon (n-gram ids and weights) both lay out their values
this way; one implementation, so both place a batch's values alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike


def pad(lengths: np.ndarray, *values: tuple[ArrayLike, DTypeLike]) -> list[np.ndarray]:
    """For each (values, dtype): a [len(lengths), max(1, longest)] array whose row i holds the next
    lengths[i] values (the values come text after text), zeros after them."""
    width = max(1, int(lengths.max(initial=0)))
    rows = np.repeat(np.arange(len(lengths)), lengths)
    columns = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: list[np.ndarray] = []
    for data, dtype in values:
        array: np.ndarray[Any, Any] = np.zeros((len(lengths), width), dtype=dtype)
        array[rows, columns] = data
        out.append(array)
    return out
