"""Private, verified copies of the files a long-running process memory-maps.

A memory map reads a file as it is at each access: a vector store truncated under a running
server (what ``cp`` over it in place does) kills the server with SIGBUS at the next read past
the new end, and a store rewritten in place changes its answers silently. So a server maps
copies it made itself, verified while they are written against the fingerprint or sha256 the
repository records: nothing done to the repository's files afterwards reaches a running server.
Each server has one folder of copies (in the system's temporary folder unless told otherwise),
shared by its worker processes and removed when it stops; each copy is made once, under a lock,
by the first process that needs it. A folder left by a server that was killed is removed by the
next server that starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tlserve.core.errors import BundleError
from tlserve.core.processes import writer_is_gone
from tlserve.core.vector_store import MANIFEST, VECTORS, VOCAB, StoreManifest, check_fingerprint, write_index

_LOGGER = logging.getLogger(__name__)
PREFIX = "tlserve-snapshots-"
_CHUNK = 1 << 20


def _copy_hashing(source: Path, target: Path) -> str:
    """Copies `source` to `target` and returns the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        # The source's pages are not needed again: leave the page cache to the copy.
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(reader.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Snapshots:
    """A folder of verified copies, by fingerprint (stores) and sha256 (single files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def create(cls, parent: Path | None = None) -> Snapshots:
        """A new folder in `parent` (the system's temporary folder if None); removes the folders of servers
        that are gone."""
        parent = Path(parent or tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f"{PREFIX}*"):
            pid = stale.name[len(PREFIX):].split("-", 1)[0]
            if pid.isdecimal() and stale.is_dir() and writer_is_gone(int(pid), stale):
                shutil.rmtree(stale, ignore_errors=True)
                _LOGGER.info("removed %s: store copies of a server that is gone", stale)
        return cls(Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def store(self, source: Path, fingerprint: str) -> Path:
        """The folder of a verified copy of the store at `source`, whose fingerprint must be `fingerprint`.

        The vectors and vocabulary are hashed as they are copied; the index is rebuilt from the copied
        vocabulary (it is derived data, outside the fingerprint). BundleError names the file that does
        not match."""
        target = self.folder / fingerprint
        if (target / MANIFEST).is_file():
            return target
        with _locked(self.folder / f".{fingerprint}.lock"):
            if (target / MANIFEST).is_file():
                return target  # another worker made it meanwhile
            manifest = StoreManifest.read(source)
            if manifest.fingerprint != fingerprint:
                raise BundleError(f"{source / MANIFEST}: store fingerprint {manifest.fingerprint[:12]} is not "
                                  f"{fingerprint[:12]}, the one the model was trained on")
            scratch = Path(tempfile.mkdtemp(prefix=".copy-", dir=self.folder))
            try:
                hashes = {name: _copy_hashing(source / name, scratch / name) for name in (VECTORS, VOCAB)}
                check_fingerprint(source, manifest, hashes)
                write_index(scratch, (scratch / VOCAB).read_text(encoding="utf-8").split("\n")[: manifest.size])
                manifest.write(scratch)  # what was read and checked, not a second read of the file
                os.replace(scratch, target)
            except OSError as exc:
                raise BundleError(f"{source}: cannot copy the store for serving: {exc}") from None
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return target

    def file(self, source: Path, sha256: str) -> Path:
        """A verified copy of one file whose sha256 must be `sha256` (named by it: models share copies)."""
        target = self.folder / "files" / sha256
        if target.is_file():
            return target
        target.parent.mkdir(exist_ok=True)
        with _locked(self.folder / f".{sha256}.lock"):
            if target.is_file():
                return target
            scratch = target.with_name(f".{sha256}.{os.getpid()}")
            try:
                actual = _copy_hashing(source, scratch)
                if actual != sha256:
                    raise BundleError(f"{source}: sha256 {actual[:12]} does not match the manifest's {sha256[:12]}")
                os.replace(scratch, target)
            except OSError as exc:
                raise BundleError(f"{source}: cannot copy it for serving: {exc}") from None
            finally:
                scratch.unlink(missing_ok=True)
        return target
