"""The Ray engine: Ray Data scores the rows on a pool of actors, each holding one `Scorer`.

    tlserve score --engine ray [--address HOST:PORT] --workers N ...

The driver (the `tlserve score` process) reads the input with tlserve's own readers, since
one reader in file order is what gives every bad row its row number (Ray Data's CSV and JSON
readers fail a whole file on one invalid UTF-8 byte and number no rows), and puts the good rows
(row, id, text) into Ray's object store in blocks as it reads them. `map_batches` runs the
blocks through N `ScorerActor`s (each opens the model version once), and the scored blocks
stream back in input order to the driver, which writes the same Parquet file as the local
engine and moves it into place at the end.

On a cluster, every node opens the model version at the path the driver gives: the model
repository (with its vector store) must be at the same path on every node, a shared disk, or
object storage mounted or copied there before the actors start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tlserve.core.errors import TlserveError
from tlserve.core.ranking import top
from tlserve.offline.engine import predict_by_length
from tlserve.offline.tables import Record, scored_columns

_LOGGER = logging.getLogger(__name__)

# Batches per input block handed to Ray Data: blocks small enough to spread over the actors,
# large enough that per-block overhead stays small.
BATCHES_PER_BLOCK = 8


class ScorerActor:
    """One `Scorer` per actor; a batch of (row, id, text) in, the scored columns out."""

    def __init__(self, version_folder: str, repository: str, k: int) -> None:
        from tlserve.core.scorer import Scorer

        self.scorer = Scorer.open(Path(version_folder), Path(repository))
        self.labels = self.scorer.labels
        self.k = k

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        all_probabilities, counts, fractions = predict_by_length(self.scorer, batch.column("text").to_pylist())
        indices, probabilities = top(all_probabilities, self.k)
        return pa.table({"row": batch.column("row"), "id": batch.column("id"),
                         **scored_columns(self.labels, indices, probabilities, counts, fractions)})


def _shards(records: Iterable[Record], size: int) -> Iterator[Any]:
    """The records (row, id, text) as pyarrow tables of `size` rows."""
    import pyarrow as pa

    schema = pa.schema([("row", pa.int64()), ("id", pa.string()), ("text", pa.string())])
    rows: list[Record] = []
    for record in records:
        rows.append(record)
        if len(rows) >= size:
            yield pa.table({"row": [r.row for r in rows], "id": [r.id for r in rows],
                            "text": [r.text for r in rows]}, schema=schema)
            rows = []
    if rows:
        yield pa.table({"row": [r.row for r in rows], "id": [r.id for r in rows], "text": [r.text for r in rows]},
                       schema=schema)


def score_records(version_folder: Path, repository: Path, records: Iterable[Record], k: int, actors: int,
                  batch_size: int, address: str | None) -> Iterator[Any]:
    """Scored pyarrow tables of `records`, in input order, from `actors` Ray actors."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        _join(address)
    try:
        # The rows go to Ray's object store shard by shard as they are read (spilled to disk past
        # its size), not held by this process.
        shards = [ray.put(table) for table in _shards(records, batch_size * BATCHES_PER_BLOCK)]
        if not shards:
            return
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in file order
        context.enable_progress_bars = False
        # Ray Data's own lines (execution plans, "progress bars disabled") are for Ray's users, not this
        # command's; its errors still show.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        scored = ray.data.from_arrow_refs(shards).map_batches(  # type: ignore[arg-type]
            ScorerActor, fn_constructor_args=(str(version_folder.resolve()), str(repository.resolve()), k),
            batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
        )  # Ray Data's default for actor pools: a lost actor is replaced and its batches run again
        yield from scored.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        if started_here:
            ray.shutdown()


def _join(address: str | None) -> None:
    """Starts a Ray instance of this process's own (no address), or joins the cluster at `address`;
    TlserveError says what to do when it cannot."""
    import ray
    import ray.exceptions

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        causes: list[BaseException] = []
        error: BaseException | None = exc
        while error is not None and len(causes) < 10:
            causes.append(error)
            error = error.__cause__ or error.__context__
        if any(isinstance(cause, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(cause)
               for cause in causes):
            raise TlserveError(
                f"cannot join the Ray cluster at {address}: it asks for its token. Set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to it; `ray get-auth-token` on the head node shows it"
            ) from None
        raise TlserveError(f"cannot join the Ray cluster at {address}: {exc} (is `ray start --head` running "
                           "there, and is the address its GCS address, HOST:6379 by default?)") from None
