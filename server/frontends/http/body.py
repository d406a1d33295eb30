"""Request bodies of the HTTP port: read within the size limit (inflated as they arrive), counted, parsed.

`read_json` is what a handler calls: the body within `http_body_timeout_seconds` and the
request limit, its strings counted before it is parsed, then parsed by orjson. Every refusal
names what was wrong: 413 for size, 415 for an encoding, 408 for a slow sender, 400 for the rest.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any

import orjson
from aiohttp import web

from tlserve.server.core.errors import ErrorCode, ServingError
from tlserve.server.frontends.http.json_bodies import BODY_LIMIT


def invalid(message: str) -> ServingError:
    return ServingError(ErrorCode.INVALID_ARGUMENT, message)


async def read_json(request: web.Request, timeout: float, most_strings: int, too_many: str, what: str) -> Any:
    """The request's body as JSON: read within `timeout` and the app's limit, refused unread when it certainly
    holds more than `most_strings` strings (`too_many` says which limit), parsed as `what`."""
    body = await read_body(request, timeout)
    check_string_count(body, most_strings, too_many)
    return parse_json(body, what)


async def read_json_header(request: web.Request, timeout: float, header: str, most_strings: int, too_many: str,
                           what: str) -> tuple[Any, bytes]:
    """As `read_json`, for a body that may be a JSON header of as many bytes as the `header` HTTP header says,
    then binary data: the JSON, and the bytes after it."""
    body = await read_body(request, timeout)
    binary = b""
    length = request.headers.get(header)
    if length is not None:
        if not (length.isascii() and length.isdecimal()) or int(length) > len(body):
            raise invalid(f"{header} is {length!r}; it must be the byte length of the JSON header at the start of "
                          f"the body ({len(body)} bytes)")
        body, binary = body[: int(length)], body[int(length):]
    check_string_count(body, most_strings, too_many)
    return parse_json(body, what), binary


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


