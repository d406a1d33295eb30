"""The load generator: several client processes, closed or open loop, three request shapes.

Each client process runs its own asyncio loop and gRPC channel, so the generator is not
bound to one core's Python; it reports its own CPU time, so a run where the clients, not
the server, were the wall is visible. Latencies are measured per call:
- closed loop: `concurrency` callers, each sends its next call when the last one answered;
- open loop: calls are sent on a fixed schedule (rate per second) whatever the answers do,
  and a call's latency runs from its *intended* send time, so a stalled server is charged
  for the calls it delayed (no coordinated omission). Bounded by a count and a time.

Shapes: `unary` (tlserve.v1 Classify, N texts per call), `stream` (ClassifyStream, one
request per message, one stream per caller) and `v2` (Open Inference Protocol ModelInfer,
N texts as one BYTES tensor), used for tlserve's V2 endpoint and for MLServer alike.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_LOGGER = logging.getLogger(__name__)

SHAPES = ("unary", "stream", "v2")
LOAD_CONTEXT = multiprocessing.get_context("spawn")  # gRPC does not survive fork


@dataclass
class LoadSpec:
    target: str
    model: str
    shape: str
    texts_per_call: int
    texts: list[str]
    seconds: float
    concurrency: int = 1
    """Closed loop: callers in flight, spread over the processes."""
    rate: float = 0.0
    """Open loop: calls per second over all processes (0 = closed loop)."""
    processes: int = 2
    warmup_seconds: float = 1.0
    timeout: float = 10.0
    channels: int = 4
    """Connections per client process (callers share them round-robin). Several, because
    SO_REUSEPORT spreads connections, not calls, over a multi-process server's workers."""


@dataclass
class LoadResult:
    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    client_cpu_seconds: float
    texts_per_call: int

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "calls_per_s": round(self.calls_per_second, 1),
            "texts_per_s": round(self.calls_per_second * self.texts_per_call, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "max_ms": round(float(lat.max()), 3),
            "errors": self.errors,
            "client_cpu_cores": round(self.client_cpu_seconds / self.seconds, 2) if self.seconds else 0.0,
        }


def _caller(spec: LoadSpec, channel: Any) -> Callable[[list[str]], Awaitable[None]]:
    """An async function sending one call of the spec's shape with the given texts."""
    if spec.shape == "unary":
        from tlserve.contract.v1 import classifier_pb2 as pb
        from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

        stub = pb_grpc.ClassifierStub(channel)

        async def unary(texts: list[str]) -> None:
            await stub.Classify(pb.ClassifyRequest(model=spec.model, texts=texts), timeout=spec.timeout)

        return unary
    if spec.shape == "v2":
        from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
        from tlserve.contract.oip import grpc_predict_v2_pb2_grpc as v2_grpc

        stub_v2 = v2_grpc.GRPCInferenceServiceStub(channel)

        async def infer(texts: list[str]) -> None:
            encoded = [t.encode() for t in texts]
            raw = b"".join(struct.pack("<I", len(e)) + e for e in encoded)
            request = v2.ModelInferRequest(
                model_name=spec.model,
                inputs=[v2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[len(texts)])],
                raw_input_contents=[raw],
            )
            await stub_v2.ModelInfer(request, timeout=spec.timeout)

        return infer
    raise ValueError(f"shape {spec.shape!r}: use one of {SHAPES}")


class _Stream:
    """One bidirectional ClassifyStream used as a closed-loop caller: send, await the answer."""

    def __init__(self, spec: LoadSpec, channel: Any) -> None:
        from tlserve.contract.v1 import classifier_pb2 as pb
        from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

        self.pb = pb
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.spec = spec

        async def requests() -> AsyncIterator[Any]:
            while (request := await self.queue.get()) is not None:
                yield request

        self.call = pb_grpc.ClassifierStub(channel).ClassifyStream(requests())

    async def __call__(self, texts: list[str]) -> None:
        await self.queue.put(self.pb.ClassifyRequest(model=self.spec.model, texts=texts))
        response = await self.call.read()
        if response.HasField("error"):
            raise RuntimeError(response.error.message)

    async def close(self) -> None:
        await self.queue.put(None)
        self.call.cancel()


async def _client(spec: LoadSpec, index: int, share: float, measuring: Any = None) -> dict[str, Any]:
    import grpc

    rng = np.random.default_rng(index)
    texts = spec.texts
    latencies: list[float] = []
    counters = {"calls": 0, "errors": 0}
    callers = max(1, round(spec.concurrency * share))  # closed loop
    # A local subchannel pool: otherwise gRPC would share one connection among the channels.
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    count = spec.channels if spec.rate > 0 else min(spec.channels, callers)
    channels = [grpc.aio.insecure_channel(spec.target, options=options) for _ in range(max(1, count))]
    try:
        for ch in channels:
            await ch.channel_ready()

        def batch() -> list[str]:
            start = int(rng.integers(0, max(1, len(texts) - spec.texts_per_call)))
            return texts[start : start + spec.texts_per_call]

        loop = asyncio.get_running_loop()
        measure_from = loop.time() + spec.warmup_seconds
        stop_at = measure_from + spec.seconds

        def signal_measuring() -> None:
            # Tells the caller of run_load when this client's measured window begins.
            if measuring is not None:
                loop.call_at(measure_from, measuring.set)

        async def timed(send: Callable[[list[str]], Awaitable[None]], intended: float) -> None:
            try:
                await send(batch())
                ok = True
            except Exception:
                ok = False
            done = loop.time()
            if intended >= measure_from and intended < stop_at:
                counters["calls" if ok else "errors"] += 1
                if ok:
                    latencies.append((done - intended) * 1000)

        cpu_start = None
        if spec.rate <= 0:
            streams = ([_Stream(spec, channels[i % len(channels)]) for i in range(callers)]
                       if spec.shape == "stream" else [])
            unaries = [_caller(spec, ch) for ch in channels] if spec.shape != "stream" else []

            async def loop_one(i: int) -> None:
                send = streams[i] if streams else unaries[i % len(unaries)]
                assert send is not None
                while loop.time() < stop_at:
                    await timed(send, loop.time())

            async def cpu_mark() -> None:
                nonlocal cpu_start
                await asyncio.sleep(max(0.0, measure_from - loop.time()))
                cpu_start = time.process_time()

            marker = asyncio.ensure_future(cpu_mark())
            signal_measuring()
            await asyncio.gather(*(loop_one(i) for i in range(callers)))
            await marker
            for stream in streams:
                await stream.close()
        else:
            if spec.shape == "stream":
                raise ValueError("open loop uses unary or v2 calls")
            senders = [_caller(spec, ch) for ch in channels]
            signal_measuring()
            interval = 1.0 / (spec.rate * share)
            pending: set[asyncio.Task[None]] = set()
            next_at = loop.time()
            sent = 0
            while next_at < stop_at:
                if cpu_start is None and next_at >= measure_from:
                    cpu_start = time.process_time()
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(timed(senders[sent % len(senders)], next_at))
                sent += 1
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
            if pending:
                await asyncio.wait(pending, timeout=spec.timeout)
    finally:
        for ch in channels:
            await ch.close()
    cpu = time.process_time() - (cpu_start if cpu_start is not None else 0.0)
    return {"latencies": latencies, "cpu": cpu, **counters}


def _client_process(spec_dict: dict[str, Any], index: int, share: float, out: Any, measuring: Any) -> None:
    spec = LoadSpec(**spec_dict)
    try:
        out.put((index, asyncio.run(_client(spec, index, share, measuring))))
    except Exception as exc:  # report, do not hang the parent
        out.put((index, {"error": repr(exc)}))


def run_load(spec: LoadSpec, measuring: Any = None) -> LoadResult:
    """Runs the load from `spec.processes` spawned client processes and merges what they measured.

    `measuring`, an Event of the spawn context (`LOAD_CONTEXT.Event()`), is set when the first
    client's measured window begins (its processes start, connect and warm up before that).
    """
    context = LOAD_CONTEXT
    out = context.Queue()
    processes = max(1, min(spec.processes, spec.concurrency if spec.rate <= 0 else spec.processes))
    shares = [1.0 / processes] * processes
    workers = [context.Process(target=_client_process, args=(asdict(spec), i, shares[i], out, measuring),
                               daemon=True) for i in range(processes)]
    for worker in workers:
        worker.start()
    results = []
    deadline = time.monotonic() + spec.seconds + spec.warmup_seconds + spec.timeout + 60
    for _ in workers:
        _, result = out.get(timeout=max(1.0, deadline - time.monotonic()))
        if "error" in result:
            raise RuntimeError(f"load client failed: {result['error']}")
        results.append(result)
    for worker in workers:
        worker.join(10)
    latencies = [x for r in results for x in r["latencies"]]
    return LoadResult(
        calls=sum(r["calls"] for r in results),
        errors=sum(r["errors"] for r in results),
        seconds=spec.seconds,
        latencies_ms=latencies,
        client_cpu_seconds=sum(r["cpu"] for r in results),
        texts_per_call=spec.texts_per_call,
    )
