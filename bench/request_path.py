"""One text's path through the server, module by module: which of tlserve's modules a call enters, in order.

A real server runs in a thread of this process (`tlserve.server.in_thread`) over a repository,
and a real client sends it one text per protocol, after warm-up calls. While the measured call
is in flight, a profile hook on the server's threads records every entry into a tlserve module:
a function of module M called from a function of another module, or by the framework itself
(gRPC's parser, aiohttp's handler, the event loop). Resuming a suspended coroutine is not an
entry: it is the same call going on. Work the event loop does when it idles (`loop_idle`'s
housekeeping: metric updates, queue sampling) belongs to no call and is listed apart.

    tlserve request-path --repository data/models --model wordnet
"""

from __future__ import annotations

import asyncio
import dis
import http.client
import json
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.server.in_thread import RunningServer, running

TEXT = "a small dog barked at the postman"
IDLE_BEFORE_SECONDS = 0.05
HOUSEKEEPING_ROOT = "tlserve.server.core.loop_idle"
"""Entries under the event loop's idle hook are housekeeping, not a call's path."""


@dataclass(frozen=True)
class Entry:
    module: str
    function: str
    caller: str | None
    """The calling tlserve module, or None when the framework (gRPC, aiohttp, the event loop) called."""
    worker: str
    """Who ran it: "call" (the call's own task), "batcher" (the model's batching task, for a whole batch) or a
    thread's name (the inference thread)."""


@dataclass
class Path_:
    """What one call entered: the call's own entries, and housekeeping that ran meanwhile."""

    protocol: str
    entries: list[Entry] = field(default_factory=list)
    housekeeping: list[Entry] = field(default_factory=list)

    def twice(self, worker: str = "call") -> list[str]:
        """The modules `worker` entered more than once."""
        counts = Counter(entry.module for entry in self.entries if entry.worker == worker)
        return sorted(module for module, count in counts.items() if count > 1)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "path": [entry.__dict__ for entry in self.entries],
                "entered_twice_by_the_call": self.twice(), "entered_twice_by_the_batcher": self.twice("batcher"),
                "housekeeping": sorted({e.module for e in self.housekeeping})}


class EntryRecorder:
    """A profile hook that records entries into tlserve modules while `recording` is set."""

    def __init__(self) -> None:
        self.recording = False
        self.events: list[tuple[Entry, bool]] = []
        self._modules: dict[str, str | None] = {}  # code file -> tlserve module (None: not tlserve's)
        self._starts: dict[types.CodeType, int] = {}

    def module_of(self, filename: str) -> str | None:
        module = self._modules.get(filename, "")
        if module == "":
            module = None
            for name, loaded in list(sys.modules.items()):
                if name.startswith("tlserve.") and getattr(loaded, "__file__", None) == filename:
                    module = name
                    break
            self._modules[filename] = module
        return module

    def _fresh(self, frame: types.FrameType) -> bool:
        """Whether the frame starts now (not a coroutine or generator resuming): it stands at its first RESUME."""
        code = frame.f_code
        start = self._starts.get(code)
        if start is None:
            start = next((ins.offset for ins in dis.get_instructions(code) if ins.opname == "RESUME"), 0)
            self._starts[code] = start
        return frame.f_lasti <= start

    def _caller(self, frame: types.FrameType) -> tuple[str | None, bool]:
        """The nearest calling tlserve module below `frame` (through library frames, not past the event loop or
        a thread's start), and whether the idle hook is below it."""
        caller = None
        back = frame.f_back
        while back is not None:
            module = self.module_of(back.f_code.co_filename)
            if module == HOUSEKEEPING_ROOT:
                return caller or module, True
            if module is not None:
                caller = caller or module
            elif back.f_globals.get("__name__", "").startswith(("asyncio.", "concurrent.futures", "threading")):
                break
            back = back.f_back
        return caller, False

    def hook(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if not self.recording or event != "call":
            return
        module = self.module_of(frame.f_code.co_filename)
        if module is None or not self._fresh(frame):
            return
        caller, idle = self._caller(frame)
        if caller == module:
            return
        entry = Entry(module, frame.f_code.co_qualname, caller, _worker())
        self.events.append((entry, idle or module == HOUSEKEEPING_ROOT))

    @contextmanager
    def record(self, protocol: str) -> Iterator[Path_]:
        path = Path_(protocol)
        self.events = []
        self.recording = True
        try:
            yield path
        finally:
            self.recording = False
        for entry, idle in self.events:
            # Threads other than the loop and the inference thread are housekeeping too (the heap trimmer's).
            other = entry.worker not in ("call", "batcher") and not entry.worker.startswith("infer-")
            (path.housekeeping if idle or other else path.entries).append(entry)


def _worker() -> str:
    loop = asyncio._get_running_loop()
    if loop is None:
        return threading.current_thread().name
    task = asyncio.current_task(loop)
    return "batcher" if task is not None and task.get_name().startswith("batcher-") else "call"


def _set_profile(server: RunningServer, hook: Callable[..., None] | None) -> None:
    """`hook` on the server's event loop thread, and on threads started from now on (the inference thread)."""
    threading.setprofile(hook)
    done = threading.Event()

    def on_loop() -> None:
        sys.setprofile(hook)
        done.set()

    server.loop.call_soon_threadsafe(on_loop)
    done.wait(10)


def measure(server: RunningServer, model: str, scenario: str, warm_up: int = 3) -> list[Path_]:
    """One text's path for each protocol: native gRPC, the JSON mirror over HTTP, the Open Inference Protocol
    over gRPC and over HTTP. Before the measured call the server idles a moment, as a lone caller finds it."""
    recorder = EntryRecorder()
    channel = grpc.insecure_channel(server.target)
    classify = channel.unary_unary("/tlserve.v1.Classifier/Classify",
                                   request_serializer=pb.ClassifyRequest.SerializeToString,
                                   response_deserializer=pb.ClassifyResponse.FromString)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=v2.ModelInferRequest.SerializeToString,
                                response_deserializer=v2.ModelInferResponse.FromString)
    connection = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=30)

    def http_post(url: str, body: dict[str, Any]) -> None:
        connection.request("POST", url, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {url}: {response.status} {data[:200]!r}")

    oip_body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}
    calls: list[tuple[str, Callable[[], object]]] = [
        ("gRPC tlserve.v1.Classifier/Classify",
         lambda: classify(pb.ClassifyRequest(model=model, texts=[TEXT], top_k=3), timeout=30)),
        ("HTTP POST /v1/models/{model}:classify",
         lambda: http_post(f"/v1/models/{model}:classify", {"texts": [TEXT], "topK": 3})),
        ("gRPC inference.GRPCInferenceService/ModelInfer",
         lambda: infer(v2.ModelInferRequest(model_name=model, inputs=[v2.ModelInferRequest.InferInputTensor(
             name="text", datatype="BYTES", shape=[1], contents=v2.InferTensorContents(
                 bytes_contents=[TEXT.encode()]))]), timeout=30)),
        ("HTTP POST /v2/models/{model}/infer", lambda: http_post(f"/v2/models/{model}/infer", oip_body)),
    ]
    paths = []
    _set_profile(server, recorder.hook)
    try:
        for protocol, send in calls:
            for _ in range(warm_up):
                send()
            time.sleep(IDLE_BEFORE_SECONDS)
            with recorder.record(f"{protocol} ({scenario})") as path:
                send()
            paths.append(path)
    finally:
        _set_profile(server, None)
        connection.close()
        channel.close()
    return paths


def render(path: Path_) -> str:
    workers = sorted({entry.worker for entry in path.entries})
    twice = "; ".join(f"by the {worker}: {', '.join(path.twice(worker)) or 'none'}" for worker in workers)
    lines = [f"{path.protocol}: {len(path.entries)} entries; entered twice {twice}"]
    for i, entry in enumerate(path.entries, 1):
        caller = entry.caller.removeprefix("tlserve.") if entry.caller else "(framework)"
        where = "" if entry.worker == "call" else f"  [{entry.worker}]"
        lines.append(f"  {i:2d}. {entry.module.removeprefix('tlserve.')}.{entry.function}  <- {caller}{where}")
    if path.housekeeping:
        modules = sorted({entry.module.removeprefix("tlserve.") for entry in path.housekeeping})
        lines.append(f"  meanwhile, when the event loop idled: {', '.join(modules)}")
    return "\n".join(lines)


SCENARIOS = {
    "lone": {},
    # A queue delay makes every call wait in the queue for the batching task, as under load.
    "queued": {"max_queue_delay_us": 200},
}


def run(repository: Path, model: str, out: Path | None, scenarios: list[str] | None = None) -> int:
    """Prints each protocol's path in each scenario; 1 if a call's own task entered a module twice."""
    paths: list[Path_] = []
    for scenario in scenarios or list(SCENARIOS):
        with running(repository, **SCENARIOS[scenario]) as server:
            paths.extend(measure(server, model, scenario))
    for path in paths:
        print(render(path))
    if out is not None:
        out.write_text(json.dumps([path.to_dict() for path in paths], indent=1) + "\n", encoding="utf-8")
    return 1 if any(path.twice() for path in paths) else 0
