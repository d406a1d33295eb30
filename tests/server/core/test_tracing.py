"""Traces: a span per call with its stages, the caller's trace continued over gRPC and HTTP, batches linked.

The server runs in this process (`serve`, the function `tlserve serve` runs) so that the
OpenTelemetry SDK's in-memory exporter can collect what it traces; a SIGTERM to this process
stops it as it stops the real one. `test_otlp_export` runs the real command against a loopback
OTLP collector.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

from conftest import Trained, free_ports, start_server

GRPC_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HTTP_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "00f067aa0ba902b7"


def _traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{PARENT}-01"


async def _wait_serving(target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the in-process server never reached SERVING")


def test_calls_and_batches_are_traced_and_continue_the_callers_trace(trained: Trained, tmp_path: Path) -> None:
    import aiohttp
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from tlserve.core.snapshots import Snapshots
    from tlserve.server.assembly import serve
    from tlserve.server.core import tracing
    from tlserve.server.settings import ServerSettings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port, http_port = free_ports(2)
    # A queue delay makes every call go through a batch (no lone-call shortcut).
    settings = ServerSettings(repository=trained.repository, port=port, http_port=http_port, metrics_port=0,
                              max_queue_delay_us=20_000)
    target = f"127.0.0.1:{port}"

    async def scenario() -> int:
        server = asyncio.ensure_future(serve(settings, Snapshots.create(tmp_path)))
        await _wait_serving(target)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            await stub.Classify(pb.ClassifyRequest(model="wn-frozen", texts=["a young horse", "a dog"]),
                                metadata=(("traceparent", _traceparent(GRPC_TRACE)),))
            async with aiohttp.ClientSession() as session, session.post(
                    f"http://127.0.0.1:{http_port}/v1/models/wn-frozen:classify",
                    json={"texts": ["a large body of salt water"]},
                    headers={"traceparent": _traceparent(HTTP_TRACE)}) as response:
                assert response.status == 200
            await asyncio.gather(*(stub.Classify(pb.ClassifyRequest(model="wn-finetune", texts=[f"text {i}"]))
                                   for i in range(16)))
        os.kill(os.getpid(), signal.SIGTERM)
        return await server

    tracing.use(provider)
    try:
        assert asyncio.run(scenario()) == 0
    finally:
        tracing.shutdown()
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(calls) == 18  # one per call
    children: dict[int, list[Any]] = {}
    for span in spans:
        if span.parent is not None and span.kind != SpanKind.SERVER:
            children.setdefault(span.parent.span_id, []).append(span)
    for call in calls:
        stages = {s.name: s for s in children[call.context.span_id]}
        assert sorted(stages) == ["encode", "inference", "queue", "respond"], call.name
        assert all(s.context.trace_id == call.context.trace_id for s in stages.values())
        order = [stages[n] for n in ("queue", "encode", "inference", "respond")]
        assert call.start_time <= order[0].start_time and order[-1].end_time <= call.end_time
        for earlier, later in itertools.pairwise(order):
            assert earlier.end_time <= later.start_time
    by_trace = {format(c.context.trace_id, "032x"): c for c in calls}
    grpc_call, http_call = by_trace[GRPC_TRACE], by_trace[HTTP_TRACE]  # the callers' traces, continued
    assert grpc_call.name == "tlserve Classify" and http_call.name == "tlserve http:Classify"
    assert format(grpc_call.parent.span_id, "016x") == PARENT == format(http_call.parent.span_id, "016x")
    assert grpc_call.attributes["tlserve.model"] == "wn-frozen" and grpc_call.attributes["tlserve.texts"] == 2
    # Every call's inference links to its batch's span, which counts exactly the calls that link to it.
    batches = {s.context.span_id: s for s in spans if s.name == "tlserve batch"}
    linked: dict[int, int] = {}
    for call in calls:
        (inference,) = [s for s in children[call.context.span_id] if s.name == "inference"]
        (link,) = inference.links
        assert link.context.span_id in batches
        linked[link.context.span_id] = linked.get(link.context.span_id, 0) + 1
    assert {span_id: batches[span_id].attributes["tlserve.batch.calls"] for span_id in linked} == linked
    assert sum(linked.values()) == 18


def test_otlp_export_from_the_real_command(trained: Trained, tmp_path: Path) -> None:
    """`tlserve serve --otlp-endpoint` sends its spans to an OTLP/gRPC collector (here, one on loopback)."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[Any] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), collector)
    collector_port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        proc = start_server(trained.repository, tmp_path / "s.log", "--otlp-endpoint",
                            f"http://127.0.0.1:{collector_port}")
        try:
            with grpc.insecure_channel(proc.target) as channel:
                pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="wn-frozen", texts=["a dog"]),
                                                         metadata=(("traceparent", _traceparent(GRPC_TRACE)),))
        finally:
            assert proc.stop() == 0  # the exporter flushes on the way out
    finally:
        collector.stop(0)
    names = {(span.name, span.trace_id.hex()) for request in received for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans}
    assert {("tlserve Classify", GRPC_TRACE), ("queue", GRPC_TRACE), ("inference", GRPC_TRACE)} <= names


def test_calls_without_a_trace_context_are_sampled_and_a_callers_flag_is_followed() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tlserve.server.core import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for rate, carrier, traced in ((0.0, {}, False), (0.0, {"traceparent": _traceparent(GRPC_TRACE)}, True),
                                  (1.0, {"traceparent": f"00-{GRPC_TRACE}-{PARENT}-00"}, False), (1.0, {}, True)):
        tracing.use(provider, sample_rate=rate)
        try:
            span = tracing.start_call("Classify", "m", lambda c=carrier: c, 0.0)  # type: ignore[misc]
            assert (span is not None) == traced, (rate, carrier)
            assert bool(tracing.current_trace_id()) == traced
            if span is not None:
                tracing.end_call(span, "OK", 0.0)
            assert tracing.current_trace_id() == ""
        finally:
            tracing.shutdown()
    rates = []
    tracing.use(provider, sample_rate=0.25)
    tracing._RANDOM.seed(7)  # the sampler's draws, replayed below: the count is exact, not a lucky range
    try:
        for _ in range(4000):
            span = tracing.start_call("Classify", "m", None, 0.0)
            rates.append(span is not None)
            if span is not None:
                tracing.end_call(span, "OK", 0.0)
    finally:
        tracing.shutdown()
    draws = random.Random(7)
    assert rates == [draws.random() < 0.25 for _ in range(4000)]  # sampled exactly when the draw fell under 0.25
    assert 900 <= sum(rates) <= 1100  # and so about a quarter (1,000 expected)


def test_without_an_endpoint_nothing_is_traced() -> None:
    # A call through the serving core, in a process of its own (other tests import OpenTelemetry here).
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from conftest import BatchRecorder, make_plane\n"
            "from tlserve.server.core import loop_idle, tracing\n"
            "from tlserve.server.core.dataplane import ClassifyCall\n"
            "async def main():\n"
            "    plane = make_plane(BatchRecorder())\n"
            "    call = ClassifyCall('m', 0, ['a text'], 'Classify', carrier=lambda: 1 / 0)\n"
            "    return await plane.classify(call, lambda answer: answer.order.tolist())\n"
            "assert loop_idle.run(main()) == [[0, 1]]\n"
            "assert tracing.TRACER is None and tracing.current_trace_id() == ''\n"
            "assert 'opentelemetry' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[2])], check=True, timeout=60)


@pytest.fixture(autouse=True)
def _no_tracer_leaks() -> Any:
    from tlserve.server.core import tracing

    yield
    assert tracing.TRACER is None
