"""Seeded stratified splits of labelled texts (read by `tlserve.core.labelled`): test first, then the label budget,
then validation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tlserve.core.errors import InputFileError
from tlserve.core.labelled import LabelledData


def check_splittable(data: LabelledData, minimum: int) -> None:
    counts = Counter(data.labels)
    for label, count in sorted(counts.items(), key=lambda item: item[1]):
        if count < minimum:
            first = data.lines[data.labels.index(label)]
            raise InputFileError(
                data.path,
                f"class {label!r} has {count} example(s); at least {minimum} are needed to split it "
                "into train, validation and test (first seen here)",
                first,
            )


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `fraction` of each class is held out, at least one per class."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    kept: list[int] = []
    held: list[int] = []
    for label in sorted(by_class):
        members = np.array(by_class[label])
        rng.shuffle(members)
        n_held = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.extend(members[:n_held].tolist())
        kept.extend(members[n_held:].tolist())
    return np.array(sorted(kept), dtype=np.int64), np.array(sorted(held), dtype=np.int64)


def subsample(labels: list[str], fraction: float, seed: int) -> np.ndarray:
    """A stratified sample of `fraction` of the examples, at least one per class."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    _, sample = stratified_split(labels, fraction, seed)
    return sample


@dataclass
class Splits:
    train: LabelledData
    validation: LabelledData
    test: LabelledData
    notes: list[str] = field(default_factory=list)


def make_splits(
    data: LabelledData,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    train_fraction: float = 1.0,
    seed: int = 0,
    validation: LabelledData | None = None,
    test: LabelledData | None = None,
) -> Splits:
    """Test split first (seeded, stratified); then the label budget; then validation from what is left.

    `train_fraction` subsamples the labelled examples available for training (validation
    included), to measure how transfer helps with few labels.
    """
    notes = []
    if test is None:
        check_splittable(data, 3)
        rest_idx, test_idx = stratified_split(data.labels, test_fraction, seed)
        rest, test = data.subset(rest_idx), data.subset(test_idx)
    else:
        rest = data
    if train_fraction < 1.0:
        rest = rest.subset(subsample(rest.labels, train_fraction, seed))
        notes.append(f"training labels subsampled to {train_fraction:.0%}: {len(rest)} examples")
    if validation is None:
        check_splittable(rest, 2)
        train_idx, val_idx = stratified_split(rest.labels, validation_fraction, seed + 1)
        train, validation = rest.subset(train_idx), rest.subset(val_idx)
    else:
        train = rest
    unknown = sorted(set(test.labels) - set(train.labels))
    if unknown:
        notes.append(f"test labels never seen in training: {unknown}")
    return Splits(train, validation, test, notes)
