"""The naive approach, served the same way: gensim lookups per word and Keras `model.predict` per request.

    python -m tlserve.bench.naive_server --port 50101 --store STORE --data TASK.csv

What the seed article does: load the word vectors into gensim `KeyedVectors`, average the
vectors of a text's words in a Python loop, and call a small Keras MLP's `predict` on each
request. The MLP is fitted at start-up on the task's texts (the seed's recipe), and the
server speaks tlserve.v1.Classifier over grpc.aio, so the load generator treats it like
tlserve. It imports TensorFlow, which tlserve's server never does.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
from pathlib import Path

import grpc
import numpy as np

from tlserve.bench.peer_server import serve_until_signalled
from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.core.ranking import rank

_LOGGER = logging.getLogger(__name__)


def load_keyed_vectors(store_path: Path) -> object:
    from gensim.models import KeyedVectors

    from tlserve.core.vector_store import VectorStore

    store = VectorStore(store_path)
    vectors = KeyedVectors(vector_size=store.dimension, count=len(store))
    vectors.add_vectors(store.vocabulary, np.asarray(store.matrix))
    return vectors


def mean_vector(vectors: object, text: str, dimension: int) -> np.ndarray:
    """The seed's features: a Python loop over the words, one gensim lookup each."""
    found = [vectors[word] for word in text.lower().split() if word in vectors]  # type: ignore[index, operator]
    return np.mean(found, axis=0) if found else np.zeros(dimension, dtype=np.float32)


class NaiveClassifier(pb_grpc.ClassifierServicer):
    def __init__(self, vectors: object, model: object, labels: list[str], dimension: int) -> None:
        self.vectors, self.model, self.labels, self.dimension = vectors, model, labels, dimension

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        features = np.stack([mean_vector(self.vectors, text, self.dimension) for text in request.texts])
        probabilities = self.model.predict(features, verbose=0)  # type: ignore[attr-defined]
        results = []
        for row, order in zip(probabilities, rank(probabilities).tolist(), strict=True):
            results.append(pb.TextResult(labels=[pb.LabelProbability(label=self.labels[j], probability=float(row[j]))
                                                 for j in order]))
        return pb.ClassifyResponse(model=request.model, version=1, results=results)


def fit(vectors: object, data: Path, dimension: int, limit: int) -> tuple[object, list[str]]:
    import keras

    with open(data, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    labels = sorted({row["label"] for row in rows})
    x = np.stack([mean_vector(vectors, row["text"], dimension) for row in rows])
    y = np.array([labels.index(row["label"]) for row in rows])
    model = keras.Sequential([keras.Input((dimension,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(len(labels), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return model, labels


async def serve(port: int, store: Path, data: Path, limit: int) -> None:
    vectors = load_keyed_vectors(store)
    dimension = int(vectors.vector_size)  # type: ignore[attr-defined]
    model, labels = fit(vectors, data, dimension, limit)
    server = grpc.aio.server()
    # Only Classify, the one method the benchmark calls; the others answer UNIMPLEMENTED.
    servicer = NaiveClassifier(vectors, model, labels, dimension)  # type: ignore[abstract]
    pb_grpc.add_ClassifierServicer_to_server(servicer, server)
    await serve_until_signalled(server, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=10_000, help="training texts for the MLP")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.store, args.data, args.limit))


if __name__ == "__main__":
    main()
