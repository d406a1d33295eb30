"""The tlserve client: generated gRPC stubs (`tlserve.client.v1`) and a small typed client.

Installed alone with ``pip install tlserve`` (or ``tlserve[client]``): grpcio and protobuf
only. Names are imported lazily so that `tlserve <verb>` can read this package's command
module without loading gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlserve.client.classifier import (
        AsyncClassifier,
        Classification,
        Classifier,
        ClassifierError,
        Explanation,
        LabelProbability,
        WordContribution,
    )

__all__ = ["AsyncClassifier", "Classification", "Classifier", "ClassifierError", "Explanation", "LabelProbability",
           "WordContribution"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tlserve.client import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'tlserve.client' has no attribute {name!r}")
