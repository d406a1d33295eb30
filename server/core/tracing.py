"""OpenTelemetry traces of calls and batches, for every front end.

Off unless ``--otlp-endpoint`` is set (or a test installs a tracer provider with `use`): then
`TRACER` is None and the hot path pays one ``is None`` test per call and per batch.

On, every call gets a SERVER span (``tlserve <method>``) that continues the caller's trace when
its gRPC metadata or HTTP headers carry a W3C ``traceparent``, with four children laid out on
the call's own clock: ``queue`` (until its batch started), ``encode`` and ``inference`` (its
batch's stages) and ``respond`` (building the answer). Each batch gets a span of its own
(``tlserve batch``), and the ``inference`` span of every call in it links to that span, so one
batch's calls can be found from any of them. Spans are exported over OTLP/gRPC in batches by
the SDK's background thread.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

_LOGGER = logging.getLogger(__name__)

TRACER: Any = None
"""The tracer when tracing is on, else None."""
_PROVIDER: Any = None
_TRACE_ID: contextvars.ContextVar[str] = contextvars.ContextVar("tlserve_trace_id", default="")
"""The trace id of the call the current task serves, when that call is traced."""
_SAMPLE_RATE = 1.0
_RANDOM = random.Random()
# perf_counter (what the server times with) to the epoch nanoseconds spans take.
_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def _ns(perf_seconds: float) -> int:
    return int(perf_seconds * 1e9) + _OFFSET_NS


def use(provider: Any, sample_rate: float = 1.0) -> None:
    """Traces with `provider` (an SDK TracerProvider with its processors and exporters)."""
    global TRACER, _PROVIDER, _SAMPLE_RATE
    _PROVIDER = provider
    _SAMPLE_RATE = sample_rate
    TRACER = provider.get_tracer("tlserve")


def start_otlp(endpoint: str, sample_rate: float = 1.0) -> None:
    """Exports traces to an OTLP/gRPC collector at `endpoint` (http:// for plaintext, https:// for TLS).

    `sample_rate` of the calls that bring no trace context start a recorded trace; a caller's
    traceparent decides for its own calls (its sampled flag), as OpenTelemetry's parent-based
    sampler does."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    except ImportError:
        raise RuntimeError("--otlp-endpoint needs OpenTelemetry: pip install 'tlserve[tracing]'") from None
    from tlserve import __version__

    # Calls without a trace context are drawn in `start_call`, before OpenTelemetry sees them (an
    # unsampled call then costs one random number); the SDK follows a caller's sampled flag.
    provider = TracerProvider(resource=Resource.create({"service.name": "tlserve", "service.version": __version__}),
                              sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint,
                                                                    insecure=endpoint.startswith("http://"))))
    use(provider, sample_rate)


def shutdown() -> None:
    """Exports what is buffered and stops tracing."""
    global TRACER, _PROVIDER, _SAMPLE_RATE
    _SAMPLE_RATE = 1.0
    if _PROVIDER is not None:
        _PROVIDER.shutdown()
    TRACER = _PROVIDER = None


def current_trace_id() -> str:
    """The trace id (32 hex digits) of the call this task serves, or "" when tracing is off."""
    return _TRACE_ID.get()


def start_call(method: str, model: str, carrier: Callable[[], Mapping[str, str]] | None, started: float) -> Any:
    """The call's span, or None when the call is not sampled."""
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers = carrier() if carrier is not None else {}
    if "traceparent" not in headers and _SAMPLE_RATE < 1.0 and _RANDOM.random() >= _SAMPLE_RATE:
        return None
    parent = TraceContextTextMapPropagator().extract(headers) if headers else None
    span = TRACER.start_span(f"tlserve {method}", context=parent, kind=SpanKind.SERVER, start_time=_ns(started),
                             attributes={"rpc.method": method, "tlserve.model": model})
    if not span.is_recording():  # the caller's trace is not sampled
        return None
    _TRACE_ID.set(format(span.get_span_context().trace_id, "032x"))
    return span


def call_stages(span: Any, call_started: float, prediction: Any, respond_started: float, respond_ended: float,
                version: int, texts: int) -> None:
    """The call's queue, encode, inference and respond spans, from its prediction's timings."""
    from opentelemetry import trace

    parent = trace.set_span_in_context(span)
    encode_started = prediction.started or call_started
    inference_started = encode_started + prediction.encode_seconds
    links = [trace.Link(context) for context in prediction.batch_spans]
    for name, start, end, span_links in (
            ("queue", call_started, encode_started, None),
            ("encode", encode_started, inference_started, None),
            ("inference", inference_started, inference_started + prediction.inference_seconds, links),
            ("respond", respond_started, respond_ended, None)):
        TRACER.start_span(name, context=parent, start_time=_ns(start), links=span_links).end(end_time=_ns(end))
    span.set_attribute("tlserve.version", version)
    span.set_attribute("tlserve.texts", texts)


def end_call(span: Any, code: str, ended: float) -> None:
    _TRACE_ID.set("")  # a connection's next call may run in this task
    if code != "OK":
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, code))
    span.set_attribute("rpc.status", code)
    span.end(end_time=_ns(ended))


def batch_span(model: str, version: int, texts: int, calls: int, started: float, ended: float) -> Any:
    """A finished span for one batch; returns its context for the calls' links."""
    span = TRACER.start_span("tlserve batch", start_time=_ns(started), attributes={
        "tlserve.model": model, "tlserve.version": version, "tlserve.batch.texts": texts,
        "tlserve.batch.calls": calls})
    span.end(end_time=_ns(ended))
    return span.get_span_context()
