"""`tlserve evaluate`: tlserve and its peers on K seeded stratified splits, mean +- sd and paired differences.

One split of a few hundred test texts moves accuracy by one or two points, so a single run
cannot say which system is ahead. Each repeat draws a new seeded split (test first, then the
label budget, then validation, as `tlserve train` does); every system trains on the same
training split, tunes on the same validation split (or on the training labels, as its
own tooling does) and is scored once on the same test split. The summary gives each
system's mean and standard deviation, and the per-split difference between tlserve's
default mode and the best peer (by mean accuracy): its mean, its standard deviation and
on how many splits tlserve was ahead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.evaluation import evaluate, expected_calibration_error
from tlserve.core.labelled import is_chinese
from tlserve.core.vector_store import VectorStore
from tlserve.trainer.calibration import undo_temperature
from tlserve.trainer.config import PEERS, TrainConfig

_LOGGER = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """What `tlserve evaluate` runs."""

    train: TrainConfig
    """The training settings of tlserve (data, vectors, label budget, ...); its seed is the first split's."""
    repeats: int = 5
    """Seeded splits: seeds train.seed, train.seed + 1, ..."""
    modes: list[str] = field(default_factory=lambda: ["finetune", "frozen"])
    """tlserve modes to run; the first is the default one the paired comparison uses."""
    peers: list[str] = field(default_factory=lambda: list(PEERS))
    """Peers to run (fastText ones are skipped if fasttext is not installed)."""


def _score(true: list[str], probabilities: np.ndarray, labels: list[str], seconds: float, **extra: Any
           ) -> dict[str, Any]:
    evaluation = evaluate(true, probabilities, labels)
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(label, -1) for label in true])
    return {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1,
            "ece": expected_calibration_error(probabilities, truth), "seconds": round(seconds, 2), **extra}


def run_split(config: EvaluateConfig, seed: int, store: VectorStore) -> dict[str, Any]:
    """Every system on the split of `seed`."""
    from tlserve.trainer import peers
    from tlserve.trainer.fitting import fit_model, predict
    from tlserve.trainer.train import load_splits

    train_config = replace(config.train, seed=seed, progress=False)
    splits = load_splits(train_config)
    labels = sorted(set(splits.train.labels))
    systems: dict[str, dict[str, Any]] = {}
    for mode in config.modes:
        started = time.perf_counter()
        fitted = fit_model(replace(train_config, mode=mode), splits, store, labels)
        seconds = time.perf_counter() - started
        probabilities = predict(fitted, splits.test.texts)[0]
        extra: dict[str, Any] = {"temperature": fitted.temperature, "temperature_exponent": fitted.temperature_exponent,
                                 "mixture": fitted.mixture}
        if fitted.temperature != 1.0 or fitted.temperature_exponent != 0.0:  # the same model's ECE without it
            index = {label: i for i, label in enumerate(labels)}
            truth = np.array([index.get(label, -1) for label in splits.test.labels])
            raw = undo_temperature(probabilities, fitted.temperature, fitted.temperature_exponent)
            extra["ece_uncalibrated"] = expected_calibration_error(raw, truth)
            extra["accuracy_uncalibrated"] = float(np.mean(raw.argmax(1) == truth))
        systems[f"tlserve_{mode}"] = _score(splits.test.labels, probabilities, labels, seconds, **extra)
    chinese = is_chinese(splits.train.texts)
    if "tfidf_logreg" in config.peers:
        result = peers.tfidf_logreg(splits, labels, chinese)
        systems["tfidf_logreg"] = _score(splits.test.labels, result.probabilities, labels, result.seconds,
                                         chosen=result.chosen)
    if "tfidf_word_char" in config.peers:
        result = peers.tfidf_word_char(splits, labels, chinese)
        systems["tfidf_word_char"] = _score(splits.test.labels, result.probabilities, labels, result.seconds,
                                            chosen=result.chosen)
    if {"fasttext", "fasttext_vectors"} & set(config.peers):
        for name, result in peers.fasttext_peers(splits, labels, store, seed, chinese).items():
            if name in config.peers:
                systems[name] = _score(splits.test.labels, result.probabilities, labels, result.seconds,
                                       chosen=result.chosen)
    for name, scores in systems.items():
        _LOGGER.info("seed %d %-18s accuracy %.4f  ECE %.4f  %.1f s", seed, name, scores["accuracy"], scores["ece"],
                     scores["seconds"])
    return {"seed": seed, "examples": {"train": len(splits.train), "validation": len(splits.validation),
                                       "test": len(splits.test)}, "systems": systems}


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(splits: list[dict[str, Any]], default: str) -> dict[str, Any]:
    names = [name for name in splits[0]["systems"] if all(name in s["systems"] for s in splits)]
    summary: dict[str, Any] = {}
    for name in names:
        rows = [s["systems"][name] for s in splits]
        summary[name] = {metric: _mean_sd([row[metric] for row in rows]) for metric in ("accuracy", "macro_f1",
                                                                                         "ece", "seconds")}
    peer_names = [name for name in names if not name.startswith("tlserve_")]
    paired: dict[str, Any] = {}
    if peer_names and default in summary:
        best = max(peer_names, key=lambda name: summary[name]["accuracy"]["mean"])
        differences = [s["systems"][default]["accuracy"] - s["systems"][best]["accuracy"] for s in splits]
        paired = {"default": default, "best_peer": best, **_mean_sd(differences),
                  "ahead": sum(d > 0 for d in differences), "tied": sum(d == 0 for d in differences),
                  "splits": len(differences)}
    return {"systems": summary, "paired": paired}


def checkpoint(out: Path) -> Path:
    """Where `tlserve evaluate --out OUT` keeps the splits it has finished until OUT is written."""
    return out.with_suffix(".splits.jsonl")


def _code_fingerprint() -> str:
    """SHA-1 of the trainer's and the core's sources: a split recorded by other code is not reused."""
    import tlserve.core
    import tlserve.trainer

    digest = hashlib.sha1()
    for package in (tlserve.core, tlserve.trainer):
        folder = Path(str(package.__file__)).parent
        for path in sorted(folder.glob("*.py")) + sorted(folder.glob("*.pyx")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _settings(config: EvaluateConfig, store: VectorStore) -> dict[str, Any]:
    """What decides a split's figures besides its seed: a checkpoint is reused only if these are equal."""
    train = {name: str(value) if isinstance(value, Path) else value
             for name, value in asdict(config.train).items()
             if name not in ("seed", "progress", "repository", "model")}
    return {"train": train, "modes": config.modes, "peers": config.peers, "store": store.fingerprint,
            "code": _code_fingerprint()}


def _recorded_splits(checkpoint: Path, settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Splits a previous, interrupted run of the same settings finished (none if the settings differ)."""
    try:
        lines = checkpoint.read_text(encoding="utf-8").splitlines()
        recorded = json.loads(lines[0]) if lines else None
        if recorded != settings:
            if recorded is not None:
                _LOGGER.warning("%s: recorded with other settings or code, starting over", checkpoint)
            return {}
        splits = {}
        for line in lines[1:]:
            split = json.loads(line)
            splits[split["seed"]] = split
        return splits
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, KeyError, TypeError) as error:  # a line cut by the interruption
        _LOGGER.warning("%s: unreadable (%s), starting over", checkpoint, error)
        return {}


def _append(checkpoint: Path, record: dict[str, Any], *, first: bool = False) -> None:
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with checkpoint.open("w" if first else "a", encoding="utf-8") as file:
        file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())


def run(config: EvaluateConfig, checkpoint: Path | None = None) -> dict[str, Any]:
    """Every system on `config.repeats` seeded splits. With `checkpoint`, each finished split is appended
    to it, and a rerun with the same settings and code resumes after the splits it holds (a split of a
    large row takes the better part of an hour)."""
    store = VectorStore(config.train.vectors)
    recorded: dict[int, dict[str, Any]] = {}
    if checkpoint is not None:
        settings = _settings(config, store)
        recorded = _recorded_splits(checkpoint, settings)
        _append(checkpoint, settings, first=True)
    splits = []
    for repeat in range(config.repeats):
        seed = config.train.seed + repeat
        if seed in recorded:
            _LOGGER.info("seed %d: recorded in %s, not run again", seed, checkpoint)
            split = recorded[seed]
        else:
            split = run_split(config, seed, store)
        splits.append(split)
        if checkpoint is not None:
            _append(checkpoint, split)
    default = f"tlserve_{config.modes[0]}" if config.modes else ""
    return {"data": str(config.train.data), "vectors": str(config.train.vectors), "store": store.fingerprint,
            "train_fraction": config.train.train_fraction, "repeats": config.repeats, "default": default,
            "splits": splits, "summary": summarize(splits, default)}


def markdown(result: dict[str, Any]) -> str:
    """The summary as a Markdown table: mean +- sd of accuracy, ECE and seconds per system."""
    summary = result["summary"]
    lines = [f"{result['data']}, {result['train_fraction']:.0%} of the training labels, "
             f"{result['repeats']} seeded splits (mean +- sd)", "",
             "| system | accuracy | macro-F1 | ECE | seconds |", "|---|---|---|---|---|"]
    for name, scores in summary["systems"].items():
        cells = [f"{scores[m]['mean']:.4f} +- {scores[m]['sd']:.4f}" for m in ("accuracy", "macro_f1", "ece")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {scores['seconds']['mean']:.1f} |")
    paired = summary["paired"]
    if paired:
        lines += ["", f"{paired['default']} - {paired['best_peer']} per split: {paired['mean']:+.4f} +- "
                      f"{paired['sd']:.4f}; ahead on {paired['ahead']} of {paired['splits']} splits"]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
