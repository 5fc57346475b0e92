"""`url:` locations on a private Git host: the catalog reads them through a real plugin-proxy endpoint (as its own
service account, with an API key identity-sync issued), from a loopback "git host" serving Gitea-style raw files
under a host name that does not resolve, so only the proxy can have reached it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp import web

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service
from tests.integration.plugin_proxy.conftest import git_host_behind_proxy, gitea_raw_host
from tests.integration.test_access_enforcement import call

HOST = "git.acme.internal"
"""The repository host as the location URLs name it; nothing resolves it, the proxy endpoint holds its address."""
GIT_TOKEN = "token git-s3cret"
FILES = {
    "catalog-info.yaml": """apiVersion: backstage.io/v1alpha1
kind: Location
metadata: {name: billing-root}
spec: {targets: [./team.yaml, ./services/api/catalog-info.yaml, ./missing.yaml]}
""",
    "team.yaml": """apiVersion: backstage.io/v1alpha1
kind: Group
metadata: {name: billing-team}
spec: {type: team, children: []}
""",
    "services/api/catalog-info.yaml": """apiVersion: backstage.io/v1alpha1
kind: Component
metadata: {name: billing-api}
spec: {type: service, lifecycle: production, owner: billing-team}
""",
}


def git_host(requests: list[tuple[str, str | None]]) -> web.Application:
    """The `acme/billing` repository's `main` files, for the git host's own token only."""

    async def content_of(request: web.Request) -> str | None:
        if request.headers.get("Authorization") != GIT_TOKEN:
            raise web.HTTPUnauthorized()
        info = request.match_info
        return (
            FILES.get(info["path"])
            if (info["owner"], info["repo"], info["ref"]) == ("acme", "billing", "main")
            else None
        )

    return gitea_raw_host(requests, content_of)


@pytest_asyncio.fixture
async def suite(make_settings, http, tmp_path, monkeypatch) -> AsyncIterator[dict[str, Any]]:
    requests: list[tuple[str, str | None]] = []
    monkeypatch.setenv("GIT_HOST_TOKEN", GIT_TOKEN)
    async with contextlib.AsyncExitStack() as stack:
        credentials = [{"header": "Authorization", "secret": "env:GIT_HOST_TOKEN"}]
        proxy, _, key = await git_host_behind_proxy(
            stack, make_settings, http, git_host(requests), "catalog", name="acme-git", credentials=credentials
        )
        key_file = tmp_path / "catalog-api-key"
        key_file.write_text(key)
        settings = make_settings(
            CatalogSettings,
            proxy_url=proxy.url,
            proxy_token=f"file:{key_file}",
            repository_hosts=f"{HOST}=acme-git/{{owner}}/{{repo}}/raw/branch/{{ref}}/{{path}}",
            refresh_interval_seconds=3600,
        )
        catalog = await stack.enter_async_context(running_service(CATALOG, settings))
        yield {"catalog": catalog, "requests": requests}


async def test_url_locations_on_a_private_git_host_are_read_through_the_proxy(suite, http):
    catalog = suite["catalog"]
    target = f"https://{HOST}/acme/billing/src/branch/main/catalog-info.yaml"
    body = await call(http, "POST", f"{catalog.url}/api/catalog/locations", 201, json={"type": "url", "target": target})
    errors = body["location"]["errors"]
    assert [e["message"] for e in errors] == [
        f"https://{HOST}/acme/billing/src/branch/main/missing.yaml: missing.yaml not found"
    ], "a missing required target is reported, the rest ingests"

    component = await call(
        http, "GET", f"{catalog.url}/api/catalog/entities/by-name/component/default/billing-api", 200
    )
    assert component["metadata"]["annotations"]["backstage.io/managed-by-location"] == (
        f"url:https://{HOST}/acme/billing/src/branch/main/services/api/catalog-info.yaml"
    )
    assert [r["targetRef"] for r in component["relations"] if r["type"] == "ownedBy"] == ["group:default/billing-team"]

    # The proxy, not the catalog, reached the host, with the endpoint's credential (never the catalog's API key).
    assert sorted(suite["requests"]) == [
        ("/acme/billing/raw/branch/main/catalog-info.yaml", GIT_TOKEN),
        ("/acme/billing/raw/branch/main/missing.yaml", GIT_TOKEN),
        ("/acme/billing/raw/branch/main/services/api/catalog-info.yaml", GIT_TOKEN),
        ("/acme/billing/raw/branch/main/team.yaml", GIT_TOKEN),
    ]


async def test_unconfigured_hosts_are_fetched_directly_and_proxy_refusals_are_reported(suite, http):
    catalog = suite["catalog"]
    # Not a configured repository host: fetched directly, where the SSRF rules refuse a loopback address.
    direct = {"type": "url", "target": "http://127.0.0.1:9/acme/billing/raw/main/catalog-info.yaml"}
    body = await call(http, "POST", f"{catalog.url}/api/catalog/locations", 201, json=direct)
    assert "non-public address" in body["location"]["errors"][0]["message"]
    # Dot segments that climb out of the branch leave a URL naming no branch: refused before the proxy is asked.
    escape = {"type": "url", "target": f"https://{HOST}/acme/billing/src/branch/main/%2e%2e/%2e%2e/x.yaml"}
    body = await call(http, "POST", f"{catalog.url}/api/catalog/locations", 201, json=escape)
    assert "no branch or commit after acme/billing" in body["location"]["errors"][0]["message"]
    assert all("/x.yaml" not in path for path, _ in suite["requests"])
