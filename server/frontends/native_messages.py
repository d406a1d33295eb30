"""tlserve.v1 messages built from the serving core, shared by the gRPC front end and the JSON mirror."""

from __future__ import annotations

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.scorer import Scorer
from tlserve.server.core.dataplane import DataPlane


def model_info(plane: DataPlane, scorer: Scorer) -> pb.ModelInfo:
    manifest = scorer.bundle.manifest
    store = manifest.vector_store
    settings = plane.settings
    return pb.ModelInfo(
        name=scorer.name,
        version=scorer.version,
        versions=plane.table.versions(scorer.name),
        labels=scorer.labels,
        mode=manifest.features.mode,
        limits=pb.InputLimits(
            max_texts_per_request=settings.max_texts_per_request,
            max_text_bytes=settings.max_text_bytes,
            max_tokens=manifest.preprocessing.max_tokens,
            max_request_bytes=settings.max_request_bytes,
        ),
        vector_store=pb.VectorStoreInfo(
            fingerprint=store.fingerprint, size=store.size, dimension=store.dimension,
            source=store.source_name, shared=store.shared,
        ),
        metrics={k: float(v) for k, v in manifest.metrics.items() if isinstance(v, int | float)},
        created_at=manifest.created_at,
    )
