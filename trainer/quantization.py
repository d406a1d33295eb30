"""8-bit weights for the per-task tables of a model: what one more task costs a server.

A server holding a thousand task heads over one vector store pays, per head, the rows its
finetuning trained and the lexical channel's weights; in float32 those are most of a head.
Each is stored as int8 with a float32 scale (per row for embedding rows, whose lengths
differ; per class for the lexical weights, one scale per column) and the graph multiplies
the gathered int8 values by their scale. The trainer quantizes right after fitting and
evaluates, mixes and calibrates the quantized model, so every reported number is that of the
graph a server runs; the product ``float32(q) * scale`` is the same single rounding in NumPy,
TensorFlow and onnxruntime.
"""

from __future__ import annotations

import numpy as np


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 [rows, dim] and float32 [rows] with row ~= q * scale; a zero row stays exactly zero."""
    table = np.asarray(table, dtype=np.float32)
    scale = (np.abs(table).max(axis=1, initial=0.0) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(table / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 [rows, columns] and float32 [columns] with column ~= q * scale."""
    q, scale = quantize_rows(np.asarray(matrix, dtype=np.float32).T)
    return np.ascontiguousarray(q.T), scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None]


def dequantize_columns(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[None, :]
