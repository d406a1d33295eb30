"""JSON bodies of the HTTP port: answers and errors, written with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

BODY_LIMIT = web.AppKey("body_limit", int)
"""The application's request body limit in bytes (named in the 413 answer)."""


def dump_json(document: Any) -> bytes:
    """`document` as compact UTF-8 JSON. orjson: ~20x faster than the standard library on an answer of
    a few tensors, the largest per-call cost of an HTTP answer after the model itself."""
    return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dump_json(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    """The error object every HTTP error answers with: ``{"error": message, "code": gRPC status name}``."""
    return web.json_response({"error": message, "code": code}, status=status)
