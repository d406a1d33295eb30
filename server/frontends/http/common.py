"""What every HTTP request passes through: the one error mapping and the bearer token (middlewares).

Every handler may raise the serving core's `ServingError`; the `errors` middleware turns it
into the HTTP status that matches its gRPC counterpart and a JSON body naming what was wrong,
``{"error": "<message>", "code": "<gRPC status name>"}`` (the Open Inference Protocol's error
object, plus the code). aiohttp's own refusals (unknown path, wrong method, a body over the
limit) get the same JSON shape; nothing a client sends ends as a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tlserve.server.core.dataplane import DataPlane
from tlserve.server.core.errors import ErrorCode, ServingError
from tlserve.server.frontends.http.json_bodies import BODY_LIMIT, error_response

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


class HttpApi:
    """An API of the HTTP port: handlers over the data plane, reading bodies within `body_timeout` seconds."""

    def __init__(self, plane: DataPlane, body_timeout: float) -> None:
        self.plane = plane
        self.body_timeout = body_timeout

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError


def model_routes(method: str, model_path: str, suffix: str, handler: Handler) -> list[web.RouteDef]:
    """`handler` at a model's path and at each of its versions' (``.../versions/{version}``), then `suffix`."""
    return [web.route(method, model_path + suffix, handler),
            web.route(method, model_path + "/versions/{version:[^/:]+}" + suffix, handler)]


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
