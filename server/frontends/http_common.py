"""What the HTTP front ends share: the one error mapping, bodies read within limits, bearer tokens.

Every handler may raise the serving core's `ServingError`; the `errors` middleware turns it
into the HTTP status that matches its gRPC counterpart and a JSON body naming what was wrong,
``{"error": "<message>", "code": "<gRPC status name>"}`` (the Open Inference Protocol's error
object, plus the code). aiohttp's own refusals (unknown path, wrong method, a body over the
limit) get the same JSON shape; nothing a client sends ends as a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tlserve.server.core.errors import ErrorCode, ServingError
from tlserve.server.core.routing import parse_version

_LOGGER = logging.getLogger(__name__)

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}
"""The HTTP status of each serving error code (Google's mapping of gRPC codes to HTTP)."""

# aiohttp's own refusals, by status: the gRPC code name the JSON body gives.
_CODE_OF_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
                   408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT"}

# Probes must answer without a token, as on gRPC's health service.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_LIMIT = web.AppKey("body_limit", int)
"""The application's request body limit in bytes (named in the 413 answer)."""


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def dump_json(document: Any) -> bytes:
    """`document` as compact UTF-8 JSON. orjson: ~20x faster than the standard library on an answer of
    a few tensors, the largest per-call cost of an HTTP answer after the model itself."""
    return orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dump_json(body), status=status, content_type="application/json")


def invalid(message: str) -> ServingError:
    return ServingError(ErrorCode.INVALID_ARGUMENT, message)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServingError as exc:
        return error_response(HTTP_STATUS[exc.code], exc.code.value, exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        ours = exc.text if exc.text is not None and "max_request_bytes" in exc.text else None
        response = error_response(413, "RESOURCE_EXHAUSTED", ours or
                                  f"the request body exceeds the request limit of {request.app[BODY_LIMIT]} bytes "
                                  "(max_request_bytes); send fewer or shorter texts per request")
        response.force_close()  # the rest of an oversized body is not read
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        default = not exc.text or exc.text.startswith(f"{exc.status}:")  # aiohttp's own words, not a handler's
        message = exc.reason if default or exc.text is None else exc.text
        if exc.status == 404 and default:
            message = f"no such path {request.path!r}; see /openapi.json"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}; see /openapi.json"
        response = error_response(exc.status, _CODE_OF_STATUS.get(exc.status, "UNKNOWN"), message)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        _LOGGER.exception("HTTP %s %s failed", request.method, request.path)
        return error_response(500, "INTERNAL", "internal error; the server log has the details")


def bearer_token(token: str, open_paths: frozenset[str] = OPEN_PATHS
                 ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Refuses requests without ``Authorization: Bearer <token>`` (`open_paths` exempt) with 401."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in open_paths:
            # surrogateescape: header bytes that are not UTF-8 compare as themselves (and fail), not as a 500.
            presented = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            # Constant time: the comparison leaks nothing about how much of the token matched.
            if not hmac.compare_digest(presented, expected):
                response = error_response(401, "UNAUTHENTICATED", "missing or wrong bearer token in 'Authorization'")
                response.headers["WWW-Authenticate"] = 'Bearer realm="tlserve"'
                return response
        return await handler(request)

    return check


# Content-Encoding of a request body -> zlib's wbits (gzip; zlib-wrapped deflate, as RFC 9110 defines it).
_INFLATE_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


def too_large(request: web.Request, what: str) -> web.HTTPRequestEntityTooLarge:
    """The 413 of a body over the limit (the `errors` middleware closes its connection)."""
    limit = request.app[BODY_LIMIT]
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1,
                                         text=f"{what} exceeds the request limit of {limit} bytes "
                                              "(max_request_bytes); send fewer or shorter texts per request "
                                              "(tlserve's clients split long lists themselves)")


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The whole body, decompressed, within `timeout` seconds (a slow sender gets 408) and the app's size limit.

    A compressed body is inflated as it arrives and never beyond the limit: a small upload that would
    inflate to gigabytes costs the server one limit's worth of memory, then a 413."""
    limit = request.app[BODY_LIMIT]
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "", *_INFLATE_WBITS):
        raise web.HTTPUnsupportedMediaType(text=f"Content-Encoding {encoding!r} is not supported; send the body "
                                                "uncompressed, gzip or deflate")
    wbits = _INFLATE_WBITS.get(encoding)
    if wbits is None and request.content_length is not None and request.content_length > limit:
        raise too_large(request, f"the body's {request.content_length} bytes")
    inflater = zlib.decompressobj(wbits) if wbits is not None else None
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):  # a timer, where wait_for would also start a task
            async for chunk in request.content.iter_any():
                if inflater is None:
                    body += chunk
                else:
                    try:
                        body += inflater.decompress(chunk, limit + 1 - len(body))
                    except zlib.error as exc:
                        raise invalid(f"the body is not valid {encoding} data (Content-Encoding: {encoding}): "
                                      f"{exc}") from None
                if len(body) > limit:
                    raise too_large(request, "the body" if inflater is None else f"the {encoding} body inflated")
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {timeout:g} s "
                                          "(http_body_timeout_seconds)") from None
    if inflater is not None and not inflater.eof:
        raise invalid(f"the {encoding} body ends before its compressed stream does (Content-Encoding: {encoding})")
    return bytes(body)


# A \uD800-\uDFFF escape: JSON can spell a lone UTF-16 surrogate, which no UTF-8 text holds.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Bodies up to this size that orjson refuses are read again by the standard library, for its diagnosis.
_DIAGNOSE_BYTES = 64 << 10


def _check_unicode(value: Any, where: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise invalid(f"{where} holds a lone UTF-16 surrogate (\\u{ord(value[exc.start]):04x} at character "
                          f"{exc.start}); send valid Unicode") from None
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, f"a key of {where}")
            _check_unicode(item, f"{where}.{key}")


def check_string_count(body: bytes, limit: int, what: str) -> None:
    """Refuses a JSON body that certainly holds more than `limit` strings, before it is parsed.

    Counting quotes runs at memory speed, where parsing a body of a million tiny strings takes the
    event loop for a second. Each JSON string has two unescaped quotes, and at most one quote per
    backslash-quote pair is escaped, so this count never exceeds the strings the body holds."""
    if len(body) < 3 * limit:
        return  # too short to hold that many strings: each takes at least 3 bytes ("",)
    strings = (body.count(b'"') - body.count(b'\\"')) // 2
    if strings > limit:
        raise invalid(f"the body holds at least {strings} JSON strings; {what}")


def parse_json(body: bytes, what: str) -> Any:
    """`body` as JSON; a clear 400 naming the line and column where it is not (or the string that is not
    Unicode a UTF-8 answer could carry)."""
    try:
        # orjson takes strict UTF-8 JSON only (no lone surrogates, NaN or byte order mark) at a
        # fraction of the standard library's cost. A small body it refuses is read again below, for the
        # standard library's exact diagnosis; a large one gets orjson's own, so a malformed body never
        # costs more than a well-formed one.
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if len(body) > _DIAGNOSE_BYTES:
            raise invalid(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                          f"send {what}") from None
    try:
        document = json.loads(body.decode("utf-8"))  # RFC 8259: JSON between systems is UTF-8
    except UnicodeDecodeError as exc:
        raise invalid(f"the body is not UTF-8 (byte {exc.start}); send {what} as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise invalid(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                      f"send {what}") from None
    except RecursionError:
        raise invalid(f"the body nests JSON arrays or objects too deeply; send {what}") from None
    if _SURROGATE_ESCAPE.search(body):
        _check_unicode(document, "body")
    return document


def version_of(request: web.Request) -> int:
    """The version in the path (``/versions/{version}``), 0 (the newest) without one."""
    return parse_version(request.match_info.get("version", ""), "version in the path")
