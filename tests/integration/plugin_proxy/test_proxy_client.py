"""`shared.proxy_client`, as other services use it, against a running proxy and a loopback upstream."""

from __future__ import annotations

import pytest

from shared.errors import NotFoundError, PayloadTooLargeError, ServiceUnavailableError
from shared.proxy_client import ProxyClient
from tests.conftest import DEV_TOKEN


@pytest.fixture
async def client(proxy):
    client = ProxyClient(proxy.url, lambda: DEV_TOKEN)
    yield client
    await client.close()


async def test_fetch_and_stream_through_a_named_endpoint(proxy, http, upstream, client):
    body = {"name": "files", "target": upstream, "allow_networks": ["127.0.0.1/32"], "methods": ["GET", "POST"]}
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
        assert r.status == 201
    response = await client.fetch("files", "/echo/README.md", params={"ref": "main"})
    assert response.status == 200 and response.json()["path"] == "/echo/README.md?ref=main"
    posted = await client.fetch("files", "/upload", method="POST", body=b"abc")
    assert posted.json() == {"received": 3}
    async with client.stream("files", "/stream", params={"bytes": str(300_000)}) as stream:
        assert sum([len(c) async for c in stream.content.iter_chunked(65536)]) == 300_000
    with pytest.raises(PayloadTooLargeError):
        await client.fetch("files", "/stream", params={"bytes": "5000"}, max_bytes=4096)


async def test_proxy_problems_are_raised_as_errors(proxy, http, client):
    with pytest.raises(NotFoundError, match="no proxy endpoint missing"):
        await client.fetch("missing", "/x")
    body = {"name": "nobody-home", "target": "http://internal.test", "delegate": {"tags": ["absent"]}}
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
        assert r.status == 201
    with pytest.raises(ServiceUnavailableError, match="no online delegate agent"):
        await client.fetch("nobody-home", "/x")
