"""ClassifyResponse in protobuf wire format, written directly: the server's hottest path.

Building a response through the protobuf API creates one Python object per label per
text, about 1.6 µs each: 4 ms for 256 texts x 10 labels, more than preprocessing and the
model together. Yet the bytes of a label's entry are the same in every response except
its 4-byte probability, so each model precomputes its entries once, and a response is a
gather of those bytes (vectorised with NumPy for large responses) plus a little framing.

The layout follows the proto3 wire format of protos/tlserve/v1/classifier.proto:
ClassifyResponse{model=1, version=2, results=3 (TextResult), request_id=4};
TextResult{labels=1 (LabelProbability), token_count=2, oov_fraction=3, explanation=4};
LabelProbability{label=1, probability=2}. Zero scalars are omitted as protobuf omits them,
except a probability of exactly 0.0, which is written explicitly (it parses to the same
message). tests/server/frontends/grpc/test_wire.py parses the bytes with protobuf and compares them with
messages built through the API.
"""

from __future__ import annotations

import struct
import weakref

import numpy as np

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.wire import varint
from tlserve.core.explanations import Explanation
from tlserve.server.core.dataplane import RankedAnswer
from tlserve.server.core.routing import LabelSet

# Below this many label entries a plain Python join beats NumPy's per-call overhead.
_NUMPY_FROM_ENTRIES = 128
_FLOAT = struct.Struct("<f")
# The varints of 0..2047 (one or two bytes), made once (~120 KB): a list index instead of a loop per length.
_SMALL = 1 << 11
_VARINTS = [varint(value) for value in range(_SMALL)]


def _varint(value: int) -> bytes:
    return _VARINTS[value] if value < _SMALL else varint(value)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return bytes((tag << 3 | 2,)) + _varint(len(payload)) + payload


_ENCODERS: weakref.WeakKeyDictionary[LabelSet, ResponseEncoder] = weakref.WeakKeyDictionary()


def encode(answer: RankedAnswer) -> bytes:
    """The answer as ClassifyResponse bytes, by the encoder of its version (made on the version's first call,
    dropped with the version)."""
    encoder = _ENCODERS.get(answer.labels)
    if encoder is None:
        encoder = _ENCODERS[answer.labels] = ResponseEncoder(answer.labels.names)
    return encoder.encode(answer)


def _explanation(why: Explanation) -> bytes:
    """An Explanation message (asked for, so off the hot path: built through the protobuf API)."""
    return pb.Explanation(label=why.label, words=[
        pb.WordContribution(word=w.word, contribution=w.contribution, count=w.count) for w in why.words
    ]).SerializeToString()


class ResponseEncoder:
    """Encodes the ClassifyResponse of one model (its labels fixed) from arrays."""

    def __init__(self, labels: list[str]) -> None:
        # entry[j] = LabelProbability tag + length + label field + probability tag;
        # the probability's 4 bytes follow it.
        self.entries = []
        for label in labels:
            name = _field(1, label.encode("utf-8"))
            inner = len(name) + 5
            self.entries.append(b"\x0a" + _varint(inner) + name + b"\x15")
        self.pool = np.frombuffer(b"".join(self.entries), dtype=np.uint8)
        lengths = np.array([len(e) for e in self.entries], dtype=np.int64)
        self.entry_lengths = lengths
        self.entry_starts = np.cumsum(lengths) - lengths

    def encode(self, answer: RankedAnswer) -> bytes:
        """The answer's ranked labels (`answer.order`: most probable first, as many as the call asked for)."""
        order = answer.order
        n, k = order.shape
        top = np.take_along_axis(answer.probabilities, order, axis=1)
        floats = np.ascontiguousarray(top, dtype="<f4").tobytes()
        bodies = self._few_bodies(order, floats) if n * k < _NUMPY_FROM_ENTRIES else self._bodies(order, floats)
        parts = []
        if answer.model:
            parts.append(_field(1, answer.model.encode("utf-8")))
        if answer.version:
            parts.append(b"\x10" + _varint(answer.version))
        explanations = answer.explanations
        for i, (body, tokens, oov) in enumerate(zip(bodies, answer.token_counts.tolist(),
                                                    answer.oov_fractions.tolist(), strict=True)):
            tail = b""
            if tokens:
                tail += b"\x10" + _varint(tokens)
            if oov:
                tail += b"\x1d" + _FLOAT.pack(oov)
            if explanations is not None:
                tail += _field(4, _explanation(explanations[i]))
            parts.append(b"\x1a" + _varint(len(body) + len(tail)) + body + tail)
        if answer.request_id:
            parts.append(_field(4, answer.request_id.encode("utf-8")))
        return b"".join(parts)

    def _few_bodies(self, order: np.ndarray, floats: bytes) -> list[bytes]:
        """Each text's label entries, joined in Python (few in all)."""
        entries = self.entries
        k = order.shape[1]
        bodies = []
        for i, row in enumerate(order.tolist()):
            base = 4 * k * i
            bodies.append(b"".join([entries[j] + floats[base + 4 * c : base + 4 * c + 4] for c, j in enumerate(row)]))
        return bodies

    def _bodies(self, order: np.ndarray, floats: bytes) -> list[bytes]:
        """Each text's label entries, gathered for all texts in one vectorised pass."""
        n, k = order.shape
        source = np.concatenate([self.pool, np.frombuffer(floats, dtype=np.uint8)])
        entry_lengths = self.entry_lengths[order]  # [n, k]
        float_starts = len(self.pool) + 4 * np.arange(n * k, dtype=np.int64).reshape(n, k)
        starts = np.stack([self.entry_starts[order], float_starts], axis=2).ravel()
        lengths = np.stack([entry_lengths, np.full((n, k), 4, dtype=np.int64)], axis=2).ravel()
        out_starts = np.cumsum(lengths) - lengths
        index = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - out_starts, lengths)
        gathered = source[index].tobytes()
        body_lengths = (entry_lengths.sum(axis=1) + 4 * k).tolist()
        bodies, offset = [], 0
        for length in body_lengths:
            bodies.append(gathered[offset : offset + length])
            offset += length
        return bodies
