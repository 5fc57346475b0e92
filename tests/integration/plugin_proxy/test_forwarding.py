"""`ANY /api/proxy/{name}/{path}` in direct mode against real upstream servers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time

import pytest
from aiohttp import web
from yarl import URL

from services.plugin_proxy.app import DEFINITION, Settings, open_proxy_context
from shared.events import decode_event
from shared.service import running_service
from tests.conftest import DEV_TOKEN
from tests.helpers import eventually
from tests.integration.plugin_proxy.conftest import serve

LOOPBACK = ["127.0.0.1/32"]


async def add_endpoint(http, proxy, name, target, **spec):
    body = {"name": name, "target": target, "allow_networks": LOOPBACK, **spec}
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
        assert r.status == 201, await r.text()


async def raw_get(base_url: str, target: str, extra: bytes = b"") -> tuple[int, bytes]:
    """A request sent byte for byte, so no client library normalises the path or refuses the header."""
    url = URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {DEV_TOKEN}\r\n".encode()
        + extra
        + b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    status = int(response.split(b" ", 2)[1])
    return status, response


async def test_forwards_path_query_and_allowed_headers_only(proxy, http, upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_TOKEN", "tok-123")
    await add_endpoint(
        http,
        proxy,
        "internal",
        f"{upstream}/echo",
        methods=["GET", "POST"],
        request_headers=["X-Custom", "X-Trace-Me"],
        credentials=[{"header": "Authorization", "prefix": "Bearer ", "secret": "env:UPSTREAM_TOKEN"}],
    )
    headers = {"Cookie": "idp=1", "Connection": "X-Custom", "X-Custom": "hop", "X-Trace-Me": "ok", "X-Other": "no"}
    url = URL(f"{proxy.url}/api/proxy/internal/a/b%20c?x=1&y=%2F", encoded=True)
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        seen = await r.json()
        assert r.headers["ETag"] == '"v1"'
        assert "Set-Cookie" not in r.headers and "X-Internal-Debug" not in r.headers
    assert seen["path"] == "/echo/a/b%20c?x=1&y=%2F"
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert sent["authorization"] == "Bearer tok-123"  # the endpoint's credential, never the caller's token
    assert DEV_TOKEN not in str(seen)
    assert "cookie" not in sent and "x-custom" not in sent and "x-other" not in sent
    assert sent["x-trace-me"] == "ok"
    assert sent["x-forwarded-for"] == "127.0.0.1" and sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-prefix"] == "/api/proxy/internal"
    assert sent["x-forwarded-host"] == URL(proxy.url).raw_authority


async def test_path_rewrite_and_methods(proxy, http, upstream):
    await add_endpoint(
        http, proxy, "rw", upstream, path_rewrite=[{"pattern": "^/v1/", "replacement": "/echo/"}], methods=["GET"]
    )
    async with http.get(f"{proxy.url}/api/proxy/rw/v1/items") as r:
        assert (await r.json())["path"] == "/echo/items"
    async with http.delete(f"{proxy.url}/api/proxy/rw/v1/items") as r:
        assert r.status == 405 and r.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/api/proxy/trav/../secret",
        "/api/proxy/trav/a/%2e%2e/secret",
        "/api/proxy/trav/%252e%252E/secret",
        "/api/proxy/trav/..%2fsecret",
        "/api/proxy/trav/a%5c..%5csecret",
        "/api/proxy/trav/a%0d%0aX-Injected:%20yes",
        "/api/proxy/trav/a%00b",
    ],
)
async def test_traversal_and_control_bytes_in_the_path_are_refused(proxy, http, upstream, path):
    await add_endpoint(http, proxy, "trav", f"{upstream}/echo/public")
    status, response = await raw_get(proxy.url, path)
    assert status == 400, response
    assert b"application/problem+json" in response and b'"field":"path"' in response


async def test_header_injection_is_refused_before_it_reaches_the_upstream(proxy, http, upstream):
    await add_endpoint(http, proxy, "inj", f"{upstream}/echo")
    status, _ = await raw_get(proxy.url, "/api/proxy/inj/x", b"X-Bad: a\rInjected: b\r\n")
    assert status == 400


async def test_ssrf_rules_apply_after_resolution_unless_the_endpoint_allows(proxy, http, upstream):
    port = URL(upstream).port
    for name, target in [
        ("literal", f"http://127.0.0.1:{port}/echo"),
        ("by-name", f"http://localhost:{port}/echo"),
        ("metadata", "http://169.254.169.254/latest/meta-data"),
        ("private", "http://10.1.2.3/"),
        ("mapped", f"http://[::ffff:127.0.0.1]:{port}/echo"),
    ]:
        async with http.post(f"{proxy.url}/api/proxy/endpoints", json={"name": name, "target": target}) as r:
            assert r.status == 201
        started = time.monotonic()
        async with http.get(f"{proxy.url}/api/proxy/{name}/") as r:
            assert r.status == 502, (name, await r.text())
            assert "not allowed" in (await r.json())["detail"]
        assert time.monotonic() - started < 2
    await add_endpoint(http, proxy, "allowed", f"http://localhost:{port}/echo")
    async with http.get(f"{proxy.url}/api/proxy/allowed/") as r:
        assert r.status == 200


async def test_redirects_are_not_followed_and_foreign_locations_dropped(proxy, http, upstream):
    await add_endpoint(http, proxy, "redir", upstream)
    async with http.get(
        f"{proxy.url}/api/proxy/redir/redirect", params={"to": "http://169.254.169.254/latest"}, allow_redirects=False
    ) as r:
        assert r.status == 302 and "Location" not in r.headers
    async with http.get(
        f"{proxy.url}/api/proxy/redir/redirect", params={"to": f"{upstream}/echo/here?q=1"}, allow_redirects=False
    ) as r:
        assert r.status == 302 and r.headers["Location"] == "/api/proxy/redir/echo/here?q=1"


async def test_bodies_over_the_limit_are_413(proxy, http, upstream):
    await add_endpoint(http, proxy, "small", upstream, methods=["POST"], max_body_bytes=1024)
    async with http.post(f"{proxy.url}/api/proxy/small/upload", data=b"x" * 2048) as r:
        assert r.status == 413 and r.content_type == "application/problem+json"

    async def chunked():
        for _ in range(8):
            yield b"y" * 512

    async with http.post(f"{proxy.url}/api/proxy/small/upload", data=chunked()) as r:
        assert r.status == 413, await r.text()
    async with http.post(f"{proxy.url}/api/proxy/small/upload", data=b"z" * 1000) as r:
        assert (await r.json()) == {"received": 1000}


async def test_slow_upstream_times_out_with_504(proxy, http, upstream):
    await add_endpoint(http, proxy, "slow", upstream, timeout_seconds=0.5)
    started = time.monotonic()
    async with http.get(f"{proxy.url}/api/proxy/slow/slow", params={"seconds": "5"}) as r:
        assert r.status == 504 and r.content_type == "application/problem+json"
    assert time.monotonic() - started < 3


async def test_unknown_endpoint_and_anonymous_caller(proxy, http, anonymous_http):
    async with http.get(f"{proxy.url}/api/proxy/nope/x") as r:
        assert r.status == 404 and r.content_type == "application/problem+json"
    async with anonymous_http.get(f"{proxy.url}/api/proxy/nope/x") as r:
        assert r.status == 401


async def test_large_bodies_stream_both_ways(proxy, http, upstream):
    await add_endpoint(http, proxy, "bulk", upstream, methods=["GET", "POST"], max_body_bytes=64 * 1024 * 1024)
    size = 20 * 1024 * 1024
    async with http.get(f"{proxy.url}/api/proxy/bulk/stream", params={"bytes": str(size)}) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == size
        received = 0
        async for chunk in r.content.iter_any():
            received += len(chunk)
    assert received == size

    async def upload():
        for _ in range(size // 65536):
            yield b"u" * 65536

    async with http.post(f"{proxy.url}/api/proxy/bulk/upload", data=upload()) as r:
        assert (await r.json()) == {"received": size}


async def vault_app(token: str, secrets: dict[str, dict[str, str]]) -> web.Application:
    """A loopback server speaking Vault's KV v2 read API."""

    async def read(request: web.Request) -> web.Response:
        if request.headers.get("X-Vault-Token") != token:
            return web.json_response({"errors": ["permission denied"]}, status=403)
        data = secrets.get(f"{request.match_info['mount']}/{request.match_info['path']}")
        if data is None:
            return web.json_response({"errors": []}, status=404)
        return web.json_response({"data": {"data": data, "metadata": {"version": 3}}})

    app = web.Application()
    app.router.add_get("/v1/{mount}/data/{path:.+}", read)
    return app


async def test_credentials_from_vault_and_file_never_leak(make_settings, http, upstream, tmp_path, caplog):
    runner, vault_url = await serve(await vault_app("root-token", {"kv/team/jira": {"token": "vault-s3cret"}}))
    (tmp_path / "key").write_text("file-s3cret\n")
    settings = make_settings(Settings, vault_address=vault_url, vault_token="root-token", access_sample_rate=1.0)
    try:
        async with running_service(DEFINITION, settings) as proxy:
            await add_endpoint(
                http,
                proxy,
                "jira",
                f"{upstream}/echo",
                credentials=[
                    {"header": "Authorization", "prefix": "Bearer ", "secret": "vault:kv/team/jira#token"},
                    {"header": "X-Api-Key", "secret": f"file:{tmp_path / 'key'}"},
                ],
            )
            async with http.get(f"{proxy.url}/api/proxy/jira/x") as r:
                sent = {k.lower(): v for k, v in (await r.json())["headers"].items()}
            assert sent["authorization"] == "Bearer vault-s3cret" and sent["x-api-key"] == "file-s3cret"
            await add_endpoint(
                http, proxy, "broken", f"{upstream}/echo", credentials=[{"header": "A", "secret": "vault:kv/none#x"}]
            )
            async with http.get(f"{proxy.url}/api/proxy/broken/x") as r:
                assert r.status == 502 and "s3cret" not in await r.text()

            async def proxied_events():
                async with proxy.deps.pool.acquire() as conn:
                    rows = await conn.fetch("SELECT payload FROM outbox ORDER BY seq")
                events = [decode_event(r["payload"]) for r in rows]
                assert [e for e in events if e.type == "plugin_proxy.request.proxied"]
                return events, b"".join(r["payload"] for r in rows)

            events, payloads = await eventually(proxied_events)
            access = next(e for e in events if e.type == "plugin_proxy.request.proxied")
            assert access.actor.id == "dev-admin" and access.resource.id == "jira"
            assert access.data["method"] == "GET" and access.data["status"] == 200 and access.data["duration_ms"] > 0
            assert b"s3cret" not in payloads
    finally:
        await runner.cleanup()
    assert "s3cret" not in caplog.text


async def test_the_per_endpoint_hook_can_refuse_a_caller(make_settings, http, upstream):
    guard = functools.partial(open_proxy_context, guard=lambda principal, endpoint: endpoint.name != "locked")
    definition = dataclasses.replace(DEFINITION, open_context=guard)
    async with running_service(definition, make_settings(Settings)) as proxy:
        await add_endpoint(http, proxy, "locked", f"{upstream}/echo")
        await add_endpoint(http, proxy, "open", f"{upstream}/echo")
        async with http.get(f"{proxy.url}/api/proxy/locked/x") as r:
            assert r.status == 403 and r.content_type == "application/problem+json"
        async with http.get(f"{proxy.url}/api/proxy/open/x") as r:
            assert r.status == 200


async def test_openapi_describes_every_proxied_method_once(proxy, http):
    async with http.get(f"{proxy.url}/openapi.json") as r:
        document = await r.json()
    forwarded = document["paths"]["/api/proxy/{name}/{path}"]
    assert set(forwarded) == {"get", "head", "post", "put", "patch", "delete", "options"}
    assert forwarded["post"]["x-permission"] == "proxy_endpoint_use"
    operation_ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
