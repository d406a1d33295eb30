"""The trainer: vector import, labelled data, transfer training, ONNX export, reports (extra `trainer`).

From Python (a notebook, a pipeline step)::

    from tlserve.trainer import TrainConfig, train_model

    result = train_model(TrainConfig(data="tickets.csv", vectors="stores/glove300", repository="models",
                               model="tickets"))
    result.path, result.evaluation.accuracy      # the published version folder and its test scores

The names are imported when first used, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HeadConfig", "TrainConfig", "TrainResult", "train_model"]


def __getattr__(name: str) -> Any:
    if name in ("TrainConfig", "HeadConfig"):
        from tlserve.trainer import config

        return getattr(config, name)
    if name in ("train_model", "TrainResult"):
        from tlserve.trainer.train import TrainResult, train

        return train if name == "train_model" else TrainResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
