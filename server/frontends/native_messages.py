"""tlserve.v1 messages built from the serving core's descriptions, shared by the gRPC front end and the JSON
mirror."""

from __future__ import annotations

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.server.core.dataplane import ModelDescription


def model_info(model: ModelDescription) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        versions=model.versions,
        labels=model.labels,
        mode=model.mode,
        limits=pb.InputLimits(**model.limits),
        vector_store=pb.VectorStoreInfo(
            fingerprint=model.store["fingerprint"], size=model.store["size"], dimension=model.store["dimension"],
            source=model.store["source"], shared=model.store["shared"],
        ),
        metrics=model.metrics,
        created_at=model.created_at,
    )

