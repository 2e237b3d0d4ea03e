"""The HTTP service, the training's contract to the letter:

=========================  ====================================================
``POST /`` url[, code]     201, body = code, ``location`` = own URL + code;
                           422 ``Unable to shorten <url>`` if the code is taken
``GET /<code>``            302, ``location`` = body = the url; 404 ``Not Found``
``GET /<code>/aggregates`` 200 ``Redirects: <n>``; 404 ``Not Found`` if never visited
anything else              404 ``Not Found``
=========================  ====================================================

Bad input is refused with a 4xx and a sentence saying why, before anything is
stored: 400 (no url, not an absolute http(s) url, a bad code, a malformed
form), 413 (a body over :data:`MAX_BODY` bytes), 415 (not a form). A Redis
that cannot be reached gives 503; the next request tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from urllib.parse import parse_qsl

import redis.asyncio as aioredis
from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from . import codes, storage
from .aggregates import Aggregates
from .cache import Cache

__all__ = ["MAX_BODY", "make_server"]

log = logging.getLogger("margarine")

#: Largest request body accepted: a url and a code fit in far less.
MAX_BODY = 8192
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def text(status: int, body: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=body, headers=headers)


def not_found() -> web.Response:
    return text(404, "Not Found")


def unavailable(e: storage.StorageDown) -> web.Response:
    log.warning("margarine: Redis unavailable: %s", e)
    return text(503, "Service Unavailable: the link store (Redis) cannot be reached; try again later")


async def read_form(request: web.BaseRequest) -> Mapping[str, object]:
    """The form's fields; strict about encodings (aiohttp's own parser replaces bad bytes)."""
    if request.content_type == "multipart/form-data":
        return await request.post()
    raw = await request.read()
    fields: dict[str, object] = {}
    for name, value in parse_qsl(raw.decode(), keep_blank_values=True, errors="strict"):
        fields.setdefault(name, value)  # the first of repeated fields
    return fields


def make_server(client: aioredis.Redis, cache: Cache, aggs: Aggregates, base_url: str) -> web.Server:
    """The aiohttp server of one node, its access log off; ``base_url`` ends with ``/``.

    A low-level :class:`aiohttp.web.Server` with its four routes dispatched
    here: an ``Application``'s router, match info and handler lookup cost a
    quarter of a cached redirect's CPU (measured: 22 vs 30 µs per request for
    the same handler). The routes match as the router's ``/{code}`` and
    ``/{code}/aggregates`` did, on the path with only ``%2F`` and ``%25`` left
    encoded; any other method or path is the contract's 404, never a 405.
    The handlers are closures over what they use.
    """

    async def shorten(request: web.BaseRequest) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return text(413, f"Request body too large: at most {MAX_BODY} bytes")
        if request.content_type not in _FORMS:
            return text(
                415,
                "Unsupported Media Type: send a form (application/x-www-form-urlencoded) with a url field",
            )
        try:
            form = await read_form(request)
        except web.HTTPRequestEntityTooLarge:
            return text(413, f"Request body too large: at most {MAX_BODY} bytes")
        except (ValueError, UnicodeDecodeError) as e:
            return text(400, f"Malformed form body: {e}")
        url, code = form.get("url"), form.get("code")
        if not isinstance(url, str) or not url:
            return text(400, "Missing form field: url")
        if why := codes.check_url(url):
            return text(400, f"Bad url: {why}")
        if code is None:
            code = codes.short_code(url)
        elif not isinstance(code, str) or (why := codes.check_code(code)):
            return text(400, f"Bad code: {why or 'the code must be text'}")
        # The training's "cheaper check for already stored": a cached code is taken
        # (links never change), no need to ask Redis to refuse it.
        if cache.taken(code):
            return text(422, f"Unable to shorten {url}")
        try:
            stored = await storage.store(client, code, url)
        except storage.StorageDown as e:
            return unavailable(e)
        if not stored:
            return text(422, f"Unable to shorten {url}")
        cache.put(code, url)
        return text(201, code, location=base_url + code)

    cached, hit = cache.cached, aggs.hit

    async def redirect(code: str) -> web.Response:
        # The hit path: a dict lookup and a dict update, nothing awaited. Only
        # valid codes are ever cached, so the check waits for a miss.
        url = cached(code)
        if url is None:
            if codes.check_code(code):
                return not_found()
            try:
                url = await cache.get(code)
            except storage.StorageDown as e:
                return unavailable(e)
            if url is None:
                return not_found()
        hit(code)
        return web.Response(status=302, text=url, headers={"location": url})

    def aggregates(code: str) -> web.Response:
        count = aggs.count(code)  # None for anything never counted, bad codes included
        return not_found() if count is None else text(200, f"Redirects: {count}")

    async def handle(request: web.BaseRequest) -> web.Response:
        if request.headers.get("Expect"):
            await expect_continue(request)
        path = request.rel_url.path_safe
        if request.method == "GET":
            code, slash, rest = path[1:].partition("/")
            if not slash:
                return await redirect(code)  # "" (GET /) is no code: 404
            if rest == "aggregates" and code:
                return aggregates(code)
        elif request.method == "POST" and path == "/":
            return await shorten(request)
        return not_found()

    loop = asyncio.get_running_loop()

    def request_factory(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)

    return web.Server(handle, request_factory=request_factory, access_log=None)


async def expect_continue(request: web.BaseRequest) -> None:
    """What an aiohttp Application does for an ``Expect`` header (curl sends one for bodies over 1 KiB)."""
    expect = request.headers.get("Expect", "")
    if request.version == HttpVersion11:
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response's own size starts after it
