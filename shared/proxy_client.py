"""Calling internal systems through named plugin-proxy endpoints, so an address or a secret lives in one place.

Scorecard file checks, catalog `url:` locations and workflow HTTP steps call `ProxyClient.fetch` (bounded body in
memory) or `ProxyClient.stream` (chunks) with an endpoint name and a path, and `ProxyClient.websocket` opens a
WebSocket to an endpoint that allows them; the proxy adds credentials, applies its SSRF rules and picks a delegate
agent when the endpoint has one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from shared.errors import ERRORS_BY_STATUS, BadGatewayError, InputError, PayloadTooLargeError, ProblemError

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProxiedResponse(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class ProxyClient:
    """A client of `ANY /api/proxy/{name}/{path}`.

    `token` is the caller's bearer token, or a function returning a current one (short-lived tokens). Problems the
    proxy itself reports (unknown endpoint, forbidden, agent down, upstream timeout) are raised as the matching
    `ProblemError`; the upstream's own answers, errors included, are returned as they are.
    """

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str],
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.base_url = URL(base_url)
        self._token = token
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _url(self, endpoint: str, path: str) -> URL:
        if not path.startswith("/"):
            raise InputError.for_field("path", "must start with /")
        return self.base_url.with_path(f"/api/proxy/{endpoint}{path}", encoded=False)

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {**(headers or {}), "Authorization": f"Bearer {token}"}

    @contextlib.asynccontextmanager
    async def stream(
        self,
        endpoint: str,
        path: str,
        *,
        method: str = "GET",
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | AsyncIterator[bytes] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response, open for reading in chunks (`response.content.iter_chunked(n)`)."""
        async with self._client().request(
            method,
            self._url(endpoint, path),
            params=params,
            headers=self._headers(headers),
            data=body,
            timeout=self._timeout,
            allow_redirects=False,
        ) as response:
            if response.content_type == PROBLEM_CONTENT_TYPE and response.status >= 400:
                await _raise_problem(response)
            yield response

    @contextlib.asynccontextmanager
    async def websocket(
        self,
        endpoint: str,
        path: str,
        *,
        protocols: Sequence[str] = (),
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        heartbeat: float | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """A WebSocket to the upstream of an endpoint with `websocket: true`, closed when the block ends.

        The handshake carries the same bearer token as `fetch` and is bounded by the client's timeout; a handshake
        the proxy refuses (unknown endpoint, forbidden, agent down, upstream refused or silent) raises the matching
        `ProblemError`. `heartbeat` sends pings that keep an idle socket open through intermediaries.
        """
        try:
            async with asyncio.timeout(self._timeout.total):
                ws = await self._client().ws_connect(
                    self._url(endpoint, path),
                    protocols=protocols,
                    params=params,
                    headers=self._headers(headers),
                    heartbeat=heartbeat,
                    max_msg_size=max_message_bytes,
                )
        except aiohttp.WSServerHandshakeError as exc:
            # aiohttp drops a refused handshake's body, so the proxy's problem is known by its status only.
            error_type: type[ProblemError] = ERRORS_BY_STATUS.get(exc.status, BadGatewayError)
            raise error_type(f"the proxy refused a WebSocket to {endpoint}{path} with status {exc.status}") from None
        async with ws:
            yield ws

    async def fetch(
        self, endpoint: str, path: str, *, max_bytes: int = 10 * 1024 * 1024, **options: Any
    ) -> ProxiedResponse:
        """The whole response, refused with `PayloadTooLargeError` beyond `max_bytes`."""
        async with self.stream(endpoint, path, **options) as response:
            chunks, size = [], 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLargeError(f"the response of {endpoint}{path} exceeds {max_bytes} bytes")
                chunks.append(chunk)
            return ProxiedResponse(response.status, dict(response.headers), b"".join(chunks))


async def _raise_problem(response: aiohttp.ClientResponse) -> None:
    try:
        problem = msgspec.json.decode(await response.read(), type=dict[str, Any])
    except (msgspec.DecodeError, aiohttp.ClientError):
        problem = {}
    detail = str(problem.get("detail") or response.reason or "proxy error")
    error_type: type[ProblemError] = ERRORS_BY_STATUS.get(response.status, BadGatewayError)
    raise error_type(detail)
