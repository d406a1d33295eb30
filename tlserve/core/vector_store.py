"""The vector store: pretrained word vectors as one memory-mapped table shared by many models.

On disk, a store is a folder:

- ``vectors.npy``: float32 [size, dimension]; row i is the vector of word i.
- ``vocab.txt``: UTF-8, one word per line; line i (0-based) is word i.
- ``index_words.npy`` / ``index_rows.npy``: the vocabulary as sorted fixed-width UTF-8
  bytes and the row of each, so a batch of tokens is looked up with one vectorised
  ``np.searchsorted`` over a memory-mapped array: no per-process Python dict, and the
  pages are shared by every process that maps the store.
- ``index_hash.npy``: an open-addressing hash table (crc32, linear probing) from a word's
  bytes to its position in ``index_words``: a binary search touches ~20 scattered cache
  lines per token, the table about three, so lookups go through it (in Python, yet faster
  than the vectorised search at every batch size measured). Derived data, outside the
  fingerprint; a store written before it existed is searched as before.
- ``manifest.json``: dimension, size, case policy, source file name and sha256, and the
  store's fingerprint (sha256 over the matrix and the vocabulary).

Every array is opened with ``np.load(..., mmap_mode="r", allow_pickle=False)``: opening
costs milliseconds and N models over one store cost one table of memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.errors import BundleError
from tlserve.core.manifests import MANIFEST, read_manifest

STORE_FORMAT = 1
VECTORS = "vectors.npy"
VOCAB = "vocab.txt"
INDEX_WORDS = "index_words.npy"
INDEX_ROWS = "index_rows.npy"
INDEX_HASH = "index_hash.npy"
STORE_FILES = frozenset({MANIFEST, VECTORS, VOCAB, INDEX_WORDS, INDEX_ROWS, INDEX_HASH})
_HASH_CHUNK = 1 << 20
# Longest probe run a lookup follows; at load <= 0.5 real runs are far shorter.
MAX_PROBES = 256


@dataclass(frozen=True)
class StoreManifest:
    """What ``manifest.json`` of a store records."""

    format: int
    """Store format version; readers refuse formats they do not know."""
    dimension: int
    """Length of each vector."""
    size: int
    """Number of words (rows)."""
    case: str
    """Case policy of the vocabulary: "lower" when words were lower-cased, else "keep"."""
    source_name: str
    """File name the vectors were imported from."""
    source_sha256: str
    """sha256 of that file (or of the files of a packaged source)."""
    fingerprint: str
    """sha256 over vectors.npy and vocab.txt: the identity models refer to."""
    created_at: str
    """When the store was written, RFC 3339 UTC."""
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of vectors.npy and vocab.txt (stores written before it was recorded have none)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> StoreManifest:
        try:
            manifest = cls(**{name: data[name] for name in cls.__dataclass_fields__ if name != "files"},
                           files=dict(data.get("files") or {}))
        except KeyError as missing:
            raise BundleError(f"{where}: manifest lacks field {missing}") from None
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed store manifest: {exc}") from None
        if manifest.format != STORE_FORMAT:
            raise BundleError(f"{where}: store format {manifest.format} is not supported (expected {STORE_FORMAT})")
        return manifest

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> StoreManifest:
        """The manifest of the store in `folder`; BundleError names the file when it is missing or unreadable."""
        return cls.from_dict(read_manifest(folder, "a vector store"), Path(folder) / MANIFEST)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_of(hashes: dict[str, str]) -> str:
    """The store fingerprint from the sha256 of its vectors and vocabulary."""
    digest = hashlib.sha256()
    for name in (VECTORS, VOCAB):
        digest.update(name.encode())
        digest.update(bytes.fromhex(hashes[name]))
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in (VECTORS, VOCAB)}


def check_fingerprint(folder: Path, manifest: StoreManifest, hashes: dict[str, str]) -> None:
    """Raises BundleError naming the file of the store in `folder` whose bytes (`hashes`) the manifest
    does not record."""
    if fingerprint_of(hashes) == manifest.fingerprint:
        return
    changed = [name for name in (VECTORS, VOCAB) if manifest.files.get(name, hashes[name]) != hashes[name]]
    if changed:
        where = ", ".join(str(folder / name) for name in changed)
        raise BundleError(f"{where}: sha256 does not match the store manifest; the file changed after the store "
                          "was written (restore it, or import the vectors again and retrain)")
    raise BundleError(f"{folder / VECTORS} or {folder / VOCAB}: the store's files do not match its fingerprint "
                      f"{manifest.fingerprint[:12]}; one changed after the store was written (restore it, or "
                      "import the vectors again and retrain)")


class VocabularyIndex:
    """Maps tokens to rows with a vectorised binary search over sorted UTF-8 words."""

    def __init__(self, words: np.ndarray, rows: np.ndarray, slots: np.ndarray | None = None) -> None:
        self.words = words  # dtype S<width>, sorted ascending
        self.rows = rows  # int32, rows[i] is the row of words[i]
        self.width = words.dtype.itemsize
        self.slots = slots  # int32 [2^k], position in `words` or -1 (see hash_slots), or None
        # Memoryviews index to plain ints, several times faster than NumPy scalars.
        self._rows_view: memoryview | None = memoryview(rows) if len(rows) else None  # type: ignore[arg-type]
        self._slots_view: memoryview | None = (
            memoryview(slots) if slots is not None and len(words) else None)  # type: ignore[arg-type]

    @classmethod
    def build(cls, vocabulary: Sequence[str]) -> VocabularyIndex:
        encoded = np.array([word.encode("utf-8") for word in vocabulary], dtype=bytes)
        order = np.argsort(encoded, kind="stable")
        words = encoded[order]
        return cls(words, order.astype(np.int32), hash_slots(words))

    def lookup(self, tokens: Sequence[str]) -> np.ndarray:
        """Row of each token, -1 where the token is not in the vocabulary."""
        if not tokens or len(self.words) == 0:
            return np.full(len(tokens), -1, dtype=np.int32)
        encoded = self._encode(tokens)
        if self._slots_view is not None:
            return np.array(self._probe(encoded), dtype=np.int32)
        return self.search_bytes(encoded)

    def lookup_few(self, tokens: Sequence[str]) -> list[int]:
        """`lookup` as a list, for the few tokens of a short text (no array round trip)."""
        if not tokens or len(self.words) == 0:
            return [-1] * len(tokens)
        encoded = self._encode(tokens)
        if self._slots_view is not None:
            return self._probe(encoded)
        return self.search_bytes(encoded).tolist()

    def _probe(self, encoded: list[bytes]) -> list[int]:
        """Rows through the hash table: about three cache lines per token.

        Python per token, yet faster than the vectorised binary search at every batch
        size measured (16 to 1,000 tokens: 0.5 against 0.8-2.5 us per token), as the
        search's ~20 scattered reads into the sorted words miss the caches.
        """
        assert self._slots_view is not None and self._rows_view is not None
        slots, rows, words, size = self._slots_view, self._rows_view, self.words, len(self.words)
        mask = len(slots) - 1
        out = []
        for key in encoded:
            slot = zlib.crc32(key) & mask
            for _ in range(MAX_PROBES):
                position = slots[slot]
                if position < 0:
                    out.append(-1)
                    break
                if position < size and words[position] == key:
                    out.append(rows[position])
                    break
                slot = (slot + 1) & mask
            else:  # a damaged table must not hang the server: search instead
                out.append(int(self.search_bytes([key])[0]))
        return out

    def search_bytes(self, encoded: list[bytes]) -> np.ndarray:
        """Rows through one vectorised binary search over the sorted words."""
        # A token wider than every word cannot match, and casting it truncates it into
        # a possible false match, so such tokens are masked out after the search.
        fits = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)) <= self.width
        keys = np.array(encoded, dtype=self.words.dtype)
        pos = np.searchsorted(self.words, keys)
        np.minimum(pos, len(self.words) - 1, out=pos)
        found = fits & (self.words[pos] == keys)
        return np.where(found, self.rows[pos], -1).astype(np.int32)

    @staticmethod
    def _encode(tokens: Sequence[str]) -> list[bytes]:
        # One encode and one split in C instead of a Python encode per token; tokens
        # never hold NUL (they are runs of word characters), else fall back.
        encoded = "\0".join(tokens).encode("utf-8").split(b"\0")
        if len(encoded) != len(tokens):
            encoded = [token.encode("utf-8") for token in tokens]
        return encoded


def hash_slots(words: np.ndarray) -> np.ndarray:
    """The open-addressing table of `words` (sorted, fixed-width bytes): slot -> position or -1.

    Slots are a power of two at least twice the words (load <= 0.5, short probe runs);
    a word's first slot is crc32(word) modulo the table size, then the next free one.
    """
    size = 1 << max(4, (2 * len(words) - 1).bit_length())
    mask = size - 1
    table = [-1] * size
    for position, word in enumerate(words.tolist()):
        slot = zlib.crc32(word) & mask
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = position
    return np.array(table, dtype=np.int32)


class VectorStore:
    """An opened store: memory-mapped matrix and index; the vocabulary list on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.manifest = StoreManifest.read(self.folder)
        self.fingerprint = self.manifest.fingerprint
        self.dimension = self.manifest.dimension
        self.matrix = self._load(VECTORS)
        slots = self._load(INDEX_HASH) if (self.folder / INDEX_HASH).exists() else None
        self.index = VocabularyIndex(self._load(INDEX_WORDS), self._load(INDEX_ROWS), slots)
        if slots is not None and (slots.dtype != np.int32 or len(slots) < 2 * len(self.index.words)
                                  or len(slots) & (len(slots) - 1)):
            raise BundleError(f"{self.folder / INDEX_HASH}: not a hash table for {len(self.index.words)} words")
        if self.matrix.dtype != np.float32 or self.matrix.shape != (self.manifest.size, self.manifest.dimension):
            raise BundleError(
                f"{self.folder / VECTORS}: expected float32 {self.manifest.size}x{self.manifest.dimension}, "
                f"found {self.matrix.dtype} {'x'.join(map(str, self.matrix.shape))}"
            )
        self._vocabulary: list[str] | None = None

    def _load(self, name: str) -> np.ndarray:
        path = self.folder / name
        try:
            # A plain ndarray view of the memory map: the same shared pages, without
            # np.memmap's Python-level __getitem__ on every lookup.
            return np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: cannot open store array: {exc}") from None

    def __len__(self) -> int:
        return self.manifest.size

    @property
    def vocabulary(self) -> list[str]:
        if self._vocabulary is None:
            self._vocabulary = (self.folder / VOCAB).read_text(encoding="utf-8").split("\n")[: len(self)]
        return self._vocabulary

    def verify(self) -> None:
        """Hashes the vectors and vocabulary; BundleError names the file if they do not match the manifest."""
        check_fingerprint(self.folder, self.manifest, file_hashes(self.folder))


def write_index(folder: Path, vocabulary: Sequence[str]) -> None:
    """The vocabulary index files of a store (derived from its vocabulary) into `folder`."""
    index = VocabularyIndex.build(vocabulary)
    np.save(folder / INDEX_WORDS, index.words, allow_pickle=False)
    np.save(folder / INDEX_ROWS, index.rows, allow_pickle=False)
    assert index.slots is not None  # build() makes the table
    np.save(folder / INDEX_HASH, index.slots, allow_pickle=False)


def is_store(folder: Path) -> bool:
    """Whether `folder` holds a vector store (its manifest names a store format)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "fingerprint" in data and "dimension" in data and "format" in data


def check_store_target(out: Path, overwrite: bool) -> None:
    """Refuses a target that is not tlserve's to replace: a file, a folder that is not a store
    (with files in it), or an existing store unless `overwrite` is asked for."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError(f"{out}: exists and is not a folder; give the path of a folder for the store")
    if is_store(out):
        if not overwrite:
            raise BundleError(f"{out}: a vector store is already there; pass --overwrite to replace it")
    elif any(out.iterdir()):
        raise BundleError(f"{out}: the folder holds files that are not a vector store; tlserve will not "
                          "replace it (choose a new folder, or remove it yourself)")


def write_store(
    out: Path,
    words: Iterable[str],
    matrix: np.ndarray,
    *,
    case: str,
    source_name: str,
    source_sha256: str,
    overwrite: bool = False,
) -> StoreManifest:
    """Writes a store into `out` atomically: a temporary sibling folder renamed into place.

    Never deletes what tlserve did not write: an existing store is replaced only with
    `overwrite` (the old one is moved aside, the new one renamed in, then the old removed), and
    the files in its folder that are not the store's (notes, say) move into the new one;
    anything else already at `out` is refused before any work (`check_store_target`).
    """
    vocabulary = list(words)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(vocabulary):
        raise ValueError(f"matrix shape {matrix.shape} does not match {len(vocabulary)} words")
    for i, word in enumerate(vocabulary):
        if not word or "\n" in word or "\x00" in word or word != word.strip():
            raise ValueError(f"word {i} ({word!r}) is empty or holds whitespace, newline or NUL")
    out = Path(out)
    check_store_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        np.save(tmp / VECTORS, matrix, allow_pickle=False)
        (tmp / VOCAB).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
        write_index(tmp, vocabulary)
        hashes = file_hashes(tmp)
        manifest = StoreManifest(
            format=STORE_FORMAT,
            dimension=int(matrix.shape[1]),
            size=len(vocabulary),
            case=case,
            source_name=source_name,
            source_sha256=source_sha256,
            fingerprint=fingerprint_of(hashes),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            files=hashes,
        )
        manifest.write(tmp)
        os.chmod(tmp, 0o755)
        check_store_target(out, overwrite)  # again: something may have appeared meanwhile
        old = None
        if out.exists():
            for item in out.iterdir():
                if item.name not in STORE_FILES:
                    os.replace(item, tmp / item.name)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "store")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def copy_store(store: VectorStore, dest: Path) -> Path:
    """Places `store` at `dest` (hard links when on one file system, else copies)."""
    if (dest / MANIFEST).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name in (VECTORS, VOCAB, INDEX_WORDS, INDEX_ROWS, INDEX_HASH, MANIFEST):
            if name == INDEX_HASH and not (store.folder / name).exists():
                continue  # a store written before hash tables existed
            try:
                os.link(store.folder / name, tmp / name)
            except OSError:
                shutil.copy2(store.folder / name, tmp / name)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
