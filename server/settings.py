"""Server settings: one typed object, set by flags or ``TLSERVE_*`` environment variables.

Each field's help text is the one shown by ``tlserve serve --help``; the environment
variable of field ``max_batch_size`` is ``TLSERVE_MAX_BATCH_SIZE``. Precedence: flag,
then environment, then the default here.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "TLSERVE_"
MODEL_SETTINGS_FILE = "serving.json"
"""A model folder's own batching settings (`BatchingSettings`), beside its version folders."""


@dataclass(frozen=True)
class BatchingSettings:
    """How one model version's batcher batches; the server's flags, or a model's own `serving.json`."""

    max_batch_size: int
    max_batch_chars: int
    max_queue_delay_us: int
    adaptive_delay_us: int
    inline_batch_texts: int
    max_queue_size: int

    def overridden(self, data: Any, where: Path) -> BatchingSettings:
        """These settings with a model's own (a JSON object of some of the fields); ValueError names the file
        and the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a JSON object of batching settings, e.g. {{\"max_batch_size\": 32}}")
        known = {spec.name for spec in fields(self)}
        values = {}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"{where}: no setting {key!r}; a model may set {sorted(known)}")
            least = 0 if key in ("max_queue_delay_us", "adaptive_delay_us", "inline_batch_texts") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{where}: {key} must be an integer of at least {least}, not {value!r}")
            values[key] = value
        return replace(self, **values)


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ServerSettings:
    """Everything `tlserve serve` can be told."""

    repository: Path = _setting(Path("models"), "model repository written by `tlserve train`")
    host: str = _setting("127.0.0.1", "address the gRPC and HTTP ports bind to (0.0.0.0 in containers)")
    port: int = _setting(50051, "gRPC port")
    http_port: int = _setting(
        8080, "HTTP/JSON port beside gRPC: the Open Inference Protocol's REST binding (/v2/...), a JSON mirror of "
        "tlserve.v1 (/v1/...) and /openapi.json, served by the same process, batchers and limits (0 disables)")
    http_body_timeout_seconds: float = _setting(
        30.0, "most seconds an HTTP client may take to send a request body; slower ones get 408 and are closed")
    workers: int = _setting(1, "server processes sharing the port via SO_REUSEPORT (forked before gRPC starts)")
    metrics_host: str = _setting("127.0.0.1", "address of the Prometheus metrics HTTP server")
    metrics_port: int = _setting(9090, "Prometheus metrics HTTP port (0 disables metrics)")
    max_batch_size: int = _setting(64, "most texts per inference batch; bigger requests are split")
    max_batch_chars: int = _setting(
        65536, "most characters of text per inference batch, so a batch of long texts stays short; requests "
        "are split into chunks of a quarter of it, and calls take turns chunk by chunk")
    max_queue_delay_us: int = _setting(
        0, "most microseconds a text waits for others to fill its batch; 0 runs what is queued at once "
        "(requests arriving during a batch still form the next one)")
    adaptive_delay_us: int = _setting(
        1000, "with max_queue_delay_us 0: most microseconds a batch gathers calls while the event loop is busy "
        "receiving more (it runs as soon as the loop would idle; 0 = never gather)")
    inline_batch_texts: int = _setting(
        16, "batches of at most this many texts run on the event loop itself; larger ones in the inference "
        "thread (for a few texts the hand-off between threads costs more than the work; 0 = always the thread)")
    max_queue_size: int = _setting(2048, "most texts queued per model; beyond it calls get RESOURCE_EXHAUSTED")
    max_texts_per_request: int = _setting(1024, "most texts in one request (INVALID_ARGUMENT beyond)")
    max_text_bytes: int = _setting(16384, "most UTF-8 bytes in one text (INVALID_ARGUMENT beyond)")
    max_request_bytes: int = _setting(
        4 << 20, "largest request in bytes: a gRPC message (gRPC itself refuses a larger one, RESOURCE_EXHAUSTED) or "
        "an HTTP body once decompressed (413); tlserve's Python clients split a longer list of texts into requests "
        "under this size and the text limit")
    intra_op_threads: int = _setting(1, "onnxruntime threads per inference (1 suits small models and many workers)")
    inter_op_threads: int = _setting(1, "onnxruntime inter-op threads")
    allow_spinning: bool = _setting(False, "let onnxruntime threads spin-wait for work (lower latency, more CPU)")
    grace_seconds: float = _setting(10.0, "on SIGTERM, how long calls in flight may take to finish")
    max_connections: int = _setting(
        0, "most client connections held at once per process and port; beyond it a new gRPC connection is closed "
        "at once, and a new HTTP connection closes the HTTP connection idle longest (0: the open-file limit, "
        "raised to its hard maximum at start-up, less 256 kept for the server's own files, shared by the ports)")
    connection_idle_seconds: float = _setting(
        300.0, "a gRPC or HTTP connection with no call for this long is closed (clients reconnect when they need "
        "to; 0: never)")
    max_connection_age_seconds: float = _setting(
        0.0, "a connection older than this gets GOAWAY: no new calls on it, calls in flight have grace_seconds to "
        "finish, and clients reconnect; with DNS round-robin across replicas, that is when a client resolves the "
        "name again and finds replicas added since (0: never)")
    handshake_timeout_seconds: float = _setting(
        10.0, "a connection that has not completed its TLS/HTTP2 handshake within this time is closed")
    max_concurrent_streams: int = _setting(
        1024, "most calls in flight on one connection; more wait in the client (a client that opens more before it "
        "has read the limit gets some refused: UNAVAILABLE, which gRPC clients retry)")
    window_autotune: bool = _setting(
        False, "let gRPC grow each connection's receive window with the measured bandwidth-delay product "
        "(faster large requests over long links, but a client sending faster than the server reads can make "
        "it buffer hundreds of MB); off, each stream buffers at most 64 KiB")
    snapshot_dir: str = _setting(
        "", "folder for the server's private, verified copies of the vector stores (and SIF weights) it "
        "memory-maps, shared by its workers and removed when it stops: a store file changed or cut in the "
        "repository never reaches a running server (empty: the system's temporary folder)")
    poll_seconds: float = _setting(
        2.0, "how often the repository is scanned for new, changed or removed versions (0: only on SIGHUP)")
    version_policy: str = _setting("all", "versions served per model: all, latest, latest:N or specific:V1,V2")
    warmup_text: str = _setting("warm up the model", "text of the warm-up inference run before SERVING")
    log_format: str = _setting("text", "log format: text or json", choices=["text", "json"])
    otlp_endpoint: str = _setting(
        "", "OpenTelemetry collector (OTLP/gRPC, e.g. http://127.0.0.1:4317) to export a trace of every call to; "
        "callers' W3C traceparent is continued (off when empty; needs tlserve[tracing])")
    trace_sample_rate: float = _setting(
        1.0, "with --otlp-endpoint: share of the calls without a caller's trace context that are traced (a caller's "
        "traceparent decides for its own calls)")
    payload_log: str = _setting(
        "", "file for sampled requests and answers as JSON lines, one per text, in the format `tlserve train` reads "
        "(off when empty; with several workers, each writes PATH with its process id before the suffix)")
    payload_log_rate: float = _setting(0.01, "share of calls written to the payload log (0 to 1)")
    payload_log_hash: bool = _setting(False, "write each text's SHA-256 instead of the text to the payload log")
    payload_log_max_bytes: int = _setting(100 << 20, "payload log size at which it is rotated (PATH.1, PATH.2, ...)")
    payload_log_backups: int = _setting(5, "rotated payload log files kept")
    tls_cert: str = _setting(
        "", "PEM certificate chain of the server; with --tls-key, the gRPC and HTTP ports speak TLS")
    tls_key: str = _setting("", "PEM private key of the server certificate")
    tls_client_ca: str = _setting("", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)")
    auth_token_file: str = _setting(
        "", "file holding a bearer token every call must send as 'authorization: Bearer <token>' "
        "(health checks are exempt); TLSERVE_AUTH_TOKEN sets the token directly")
    auth_token: str = _setting("", "the bearer token itself (prefer the environment or a file: flags show in ps)")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for spec in fields(cls):
            flag = "--" + spec.name.replace("_", "-")
            env = ENV_PREFIX + spec.name.upper()
            default = spec.default if spec.default is not MISSING else None
            help_text = f"{spec.metadata['help']} [env {env}; default {default}]"
            if spec.type in (bool, "bool"):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                parser.add_argument(flag, default=None, help=help_text, choices=spec.metadata.get("choices"))

    @classmethod
    def from_sources(cls, args: argparse.Namespace | None = None, environ: dict[str, str] | None = None
                     ) -> ServerSettings:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = getattr(args, spec.name, None) if args is not None else None
            source = f"--{spec.name.replace('_', '-')}"
            if raw is None and ENV_PREFIX + spec.name.upper() in environ:
                raw = environ[ENV_PREFIX + spec.name.upper()]
                source = ENV_PREFIX + spec.name.upper()
            if raw is None:
                continue
            values[spec.name] = _convert(spec.name, spec.default, raw, source)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ("workers", "max_batch_size", "max_batch_chars", "max_queue_size", "max_texts_per_request",
                    "max_text_bytes", "intra_op_threads", "inter_op_threads")
        if self.max_request_bytes < 64 << 10:
            raise ValueError(f"max_request_bytes must be at least 65536, not {self.max_request_bytes}")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.inline_batch_texts < 0:
            raise ValueError(f"inline_batch_texts must be >= 0, not {self.inline_batch_texts}")
        for name in ("max_queue_delay_us", "adaptive_delay_us"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if not re.fullmatch(r"all|latest|latest:\d+|specific:\d+(,\d+)*", self.version_policy):
            raise ValueError(f"version_policy {self.version_policy!r}: use all, latest, latest:N or specific:V1,V2")
        if self.max_connections < 0:
            raise ValueError(f"max_connections must be >= 0, not {self.max_connections}")
        if not 0 <= self.trace_sample_rate <= 1:
            raise ValueError(f"trace_sample_rate must be in [0, 1], not {self.trace_sample_rate}")
        if not 0 < self.payload_log_rate <= 1:
            raise ValueError(f"payload_log_rate must be in (0, 1], not {self.payload_log_rate}")
        if self.payload_log_max_bytes < 1024 or self.payload_log_backups < 0:
            raise ValueError("payload_log_max_bytes must be at least 1024 and payload_log_backups at least 0")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be a port number (0 disables HTTP), not {self.http_port}")
        if self.http_body_timeout_seconds <= 0:
            raise ValueError(f"http_body_timeout_seconds must be > 0, not {self.http_body_timeout_seconds}")
        for name in ("connection_idle_seconds", "max_connection_age_seconds", "handshake_timeout_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.max_concurrent_streams < 1:
            raise ValueError(f"max_concurrent_streams must be at least 1, not {self.max_concurrent_streams}")
        if self.poll_seconds < 0:
            raise ValueError(f"poll_seconds must be >= 0, not {self.poll_seconds}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path!r}")

    def batching(self) -> BatchingSettings:
        """The batching flags, which a model's own `serving.json` may override."""
        return BatchingSettings(self.max_batch_size, self.max_batch_chars, self.max_queue_delay_us,
                                self.adaptive_delay_us, self.inline_batch_texts, self.max_queue_size)

    def token(self) -> str | None:
        """The bearer token calls must carry, or None when authentication is off."""
        if self.auth_token_file:
            token = Path(self.auth_token_file).read_text(encoding="utf-8").strip()
            if not token:
                raise ValueError(f"auth_token_file {self.auth_token_file!r} is empty")
            return token
        return self.auth_token or None


def _convert(name: str, default: Any, raw: Any, source: str) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError:
        raise ValueError(f"{source}: {raw!r} is not a valid {type(default).__name__} for {name}") from None
    return raw
