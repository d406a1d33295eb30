"""The serving core: a call in, a ranked answer out, whatever protocol the call came by.

`DataPlane.classify` is the one entry of every classification (native gRPC and its JSON
mirror, the Open Inference Protocol over gRPC and REST): limits, routing to the served
version, batching, the payload log, ranking, and the call's observation (counts, latencies,
trace), around the front end's own encoding of the answer. Front ends parse, call, encode;
they never see a scorer or a bundle. `describe` and `report` tell what a version is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tlserve.core import bundle
from tlserve.core.explanations import MAX_WORDS, Explanation, explain
from tlserve.core.ranking import rank
from tlserve.core.scorer import Prediction
from tlserve.server.core import observe, tracing
from tlserve.server.core.errors import ErrorCode, ServingError
from tlserve.server.core.payload_log import PayloadLog
from tlserve.server.core.routing import LabelSet, RoutingTable, ServedVersion
from tlserve.server.core.streams import StreamWindow
from tlserve.server.settings import ServerSettings

UNKNOWN_MODEL = "unknown"
PATH_VERSION = "version in the path"
"""How errors name a version an HTTP path gave."""
Encoded = TypeVar("Encoded")
EXPLAIN_MAX_TEXTS = 32
"""Texts of a call that asks for explanations: each is scored once more per distinct word (its first 64)."""


@dataclass
class ClassifyCall:
    """One classification as every front end reads it."""

    model: str
    version: int | str
    """0 or "": the newest served version; a string is read as the protocol wrote it (INVALID_ARGUMENT if it is
    not a version number)."""
    texts: Sequence[str]
    method: str
    """The API and method, for metrics and traces ("Classify", "http:ModelInfer", ...)."""
    top_k: int = 0
    """Labels per text in the answer, most probable first (0: all)."""
    request_id: str = ""
    time_remaining: float | None = None
    """Seconds until the caller's deadline (the work is dropped after it), or None."""
    carrier: Callable[[], Mapping[str, str]] | None = None
    """The call's metadata or headers (a caller's trace context)."""
    flow: object | None = None
    """The calls of one stream share a flow: they take one turn together in the batcher."""
    version_field: str = "version"
    """Where the protocol wrote the version (named when it is not a version number)."""
    explain: int = 0
    """Words to explain per text (`tlserve.core.explanations`); 0: none, and no cost."""
    explain_field: str = "explain"
    """Where the protocol wrote `explain` (named when it is over its limits)."""


@dataclass(frozen=True)
class RankedAnswer:
    """What a call gets back, before a front end encodes it."""

    model: str
    version: int
    labels: LabelSet
    """The version's labels, in the order of the probability columns (one object per served version)."""
    probabilities: np.ndarray
    """float32 [texts, labels]."""
    order: np.ndarray
    """int64 [texts, k]: each text's label indices, most probable first (the call's top_k, or all)."""
    token_counts: np.ndarray
    oov_fractions: np.ndarray
    request_id: str
    explanations: list[Explanation] | None = None
    """Per text, when the call asked for explanations."""


@dataclass(frozen=True)
class ModelDescription:
    """A served version, as `GetModel` and the Open Inference Protocol's metadata describe it."""

    name: str
    version: int
    versions: list[int]
    """Every served version of the model, newest first."""
    labels: list[str]
    mode: str
    limits: dict[str, int]
    """max_texts_per_request, max_text_bytes, max_tokens, max_request_bytes."""
    store: dict[str, Any]
    """fingerprint, size, dimension, source, shared."""
    metrics: dict[str, float]
    created_at: str


def _check_explain(call: ClassifyCall) -> None:
    if call.explain > MAX_WORDS:
        raise ServingError(ErrorCode.INVALID_ARGUMENT, f"{call.explain_field} asks for {call.explain} words per "
                                                       f"text; the limit is {MAX_WORDS}")
    if len(call.texts) > EXPLAIN_MAX_TEXTS:
        raise ServingError(ErrorCode.INVALID_ARGUMENT, f"{call.explain_field} is set on {len(call.texts)} texts; a "
                                                       f"call that asks for explanations holds at most "
                                                       f"{EXPLAIN_MAX_TEXTS}")


class DataPlane:
    """Classifies texts with the served versions through one batcher per version."""

    def __init__(self, table: RoutingTable, settings: ServerSettings, payload_log: PayloadLog | None = None) -> None:
        self.table = table
        self.settings = settings
        self.payload_log = payload_log
        """Sampled calls written as JSON lines (`tlserve.server.core.payload_log`), or None."""
        self.ready = False
        """Set once the first repository scan is done."""
        self.draining = False
        """Set at shutdown: calls in flight finish, but the server no longer reports ready."""
        self.streams = StreamWindow(settings.max_batch_size)
        """Admission of the requests of open streams (`tlserve.server.core.streams`)."""
        self.explaining = asyncio.Semaphore(1)
        """One call's explanations run at a time (in a thread): however many calls ask for them, they take at
        most one core from the plain calls, which keep the event loop and the batcher."""

    @property
    def live_ready(self) -> bool:
        """Ready for traffic: loaded, and not draining."""
        return self.ready and not self.draining

    def served(self, name: str, version: int | str = 0, where: str = "version") -> ServedVersion:
        """The version that answers `name` at `version` (0 or "": the newest; `where` names a malformed one)."""
        if not self.ready:
            raise ServingError(ErrorCode.UNAVAILABLE, "the server is still loading its models; retry")
        served = self.table.get(name, version, where)
        if served.held is not None:
            raise ServingError(ErrorCode.UNAVAILABLE, f"model {served.name!r} version {served.version} is not "
                                                      f"serving: {served.held}")
        return served

    def is_ready(self, name: str, version: int | str = 0, where: str = "version") -> bool:
        """Whether `name` at `version` takes calls now (an unknown model is simply not ready; a malformed version
        is INVALID_ARGUMENT)."""
        try:
            self.served(name, version, where)
        except ServingError as exc:
            if exc.code is ErrorCode.INVALID_ARGUMENT:
                raise
            return False
        return not self.draining

    async def classify(self, call: ClassifyCall, encode: Callable[[RankedAnswer], Encoded]) -> Encoded:
        """Answers `call` and returns it encoded by the front end's `encode` (timed as the respond stage).

        Raises ServingError with the code of what went wrong; every outcome is counted and timed, in one report
        when the call is over."""
        started = respond_started = time.perf_counter()
        span = tracing.start_call(call.method, call.model, call.carrier, started) if tracing.TRACER else None
        label, version, prediction, texts = "", 0, None, 0
        error: BaseException | None = None
        try:
            served = self.served(call.model, call.version, call.version_field)
            label, version = served.name, served.version
            texts = len(call.texts)
            if call.explain:
                _check_explain(call)
            deadline = None if call.time_remaining is None else asyncio.get_running_loop().time() + call.time_remaining
            prediction = await self._predict(served, call.texts, deadline, call.flow)
            explanations = await self._explain(served, call) if call.explain else None
            respond_started = time.perf_counter()
            return encode(RankedAnswer(served.name, served.version, served.labels, prediction.probabilities,
                                       rank(prediction.probabilities, call.top_k), prediction.token_counts,
                                       prediction.oov_fractions, call.request_id, explanations))
        except BaseException as exc:
            error = exc
            raise
        finally:
            observe.call_finished(label or self.model_label(call.model), version, call.method, error, started,
                                  respond_started, time.perf_counter(), prediction, texts, span)

    def refused(self, model: str, method: str, error: ServingError) -> None:
        """Counts a call its front end refused before it reached the core (a malformed request)."""
        now = time.perf_counter()
        observe.call_finished(self.model_label(model), 0, method, error, now, now, now, None, 0, None)

    async def _predict(self, served: ServedVersion, texts: Sequence[str], deadline: float | None,
                       flow: object | None) -> Prediction:
        """The batcher's prediction (it reads and checks the texts); the payload log sees the answer."""
        prediction = await served.batcher.submit(texts, deadline, flow)
        if self.payload_log is not None:
            self.payload_log.offer(served.name, served.version, served.labels.names, texts, prediction.probabilities,
                                   prediction.token_counts, prediction.oov_fractions, tracing.current_trace_id())
        return prediction

    async def _explain(self, served: ServedVersion, call: ClassifyCall) -> list[Explanation]:
        # In a thread: a text of 30 words is 31 texts to score (a millisecond), 32 long texts a second or two.
        async with self.explaining:
            started = time.perf_counter()
            explanations = await asyncio.to_thread(explain, served.scorer, list(call.texts), call.explain)
            observe.explained(served.name, len(call.texts), time.perf_counter() - started)
        return explanations

    def model_label(self, name: str) -> str:
        """`name` for metrics if it is served, else "unknown": clients cannot mint label values."""
        return name if name in self.table else UNKNOWN_MODEL

    def describe(self, name: str, version: int | str = 0, where: str = "version") -> ModelDescription:
        """The version of `name` at `version` (0: the newest) that takes calls."""
        return self._description(self.served(name, version, where))

    def describe_all(self) -> list[ModelDescription]:
        """The newest version of each served model."""
        return [self._description(served) for served in self.table]

    def _description(self, served: ServedVersion) -> ModelDescription:
        manifest = served.scorer.bundle.manifest
        store = manifest.vector_store
        return ModelDescription(
            name=served.name, version=served.version, versions=self.table.versions(served.name),
            labels=list(served.labels.names), mode=manifest.features.mode,
            limits={"max_texts_per_request": self.settings.max_texts_per_request,
                    "max_text_bytes": self.settings.max_text_bytes,
                    "max_tokens": manifest.preprocessing.max_tokens,
                    "max_request_bytes": self.settings.max_request_bytes},
            store={"fingerprint": store.fingerprint, "size": store.size, "dimension": store.dimension,
                   "source": store.source_name, "shared": store.shared},
            metrics={k: float(v) for k, v in manifest.metrics.items() if isinstance(v, int | float)},
            created_at=manifest.created_at,
        )

    def report(self, name: str, version: int | str) -> dict[str, Any]:
        """The version's training report (report.json), and which of its figures it has."""
        folder = self.served(name, version, PATH_VERSION).scorer.bundle.path
        path = folder / bundle.REPORT_JSON
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        report.get("data", {}).pop("source", None)  # a path on the training machine, not for callers
        report["figures"] = [figure for figure in bundle.REPORT_FIGURES if (folder / figure).is_file()]
        return report

    def figure(self, name: str, version: int | str, figure: str) -> Path:
        """The file of one of the version's report figures; NOT_FOUND for any other name."""
        if figure not in bundle.REPORT_FIGURES:  # only the report's own figures, never a path
            raise ServingError(ErrorCode.NOT_FOUND, f"no figure {figure!r}; figures are "
                                                    f"{list(bundle.REPORT_FIGURES)}")
        path = self.served(name, version, PATH_VERSION).scorer.bundle.path / figure
        if not path.is_file():
            raise ServingError(ErrorCode.NOT_FOUND, f"this version has no {figure}")
        return path
