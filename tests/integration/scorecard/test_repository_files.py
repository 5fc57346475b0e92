"""File rules over `url:` source locations: the scorecard service reads repository files through a real plugin-proxy
(as its own service account, with an API key identity-sync issued and a role binding granting
`proxy_endpoint_use`) from a loopback "git host" serving Gitea-style raw files."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from aiohttp import web

from services.scorecard.app import DEFINITION as SCORECARD
from services.scorecard.app import Settings as ScorecardSettings
from shared.service import running_service
from tests.helpers import eventually
from tests.integration.plugin_proxy.conftest import git_host_behind_proxy, gitea_raw_host
from tests.integration.scorecard.helpers import GROUP, checks_of, component, create_entity, create_scorecard, report

FILES = {
    "modern": {
        "Dockerfile": b"FROM python:3.12-slim\nRUN pip install billing\n",
        "package.json": json.dumps({"name": "modern", "engines": {"node": ">=20"}}).encode(),
    },
    "legacy": {
        "Dockerfile": b"FROM node:16\nFROM node:latest\nCMD node server.js\n",
        "package.json": json.dumps({"name": "legacy", "engines": {"node": "16.x"}}).encode(),
    },
    "bare": {},
    "troubled": {
        "package.json": json.dumps({"name": "troubled", "description": "x" * 10_000}).encode(),
        "broken.json": b'{"engines": ',
    },
}
STALLING = {("troubled", "Dockerfile")}

HYGIENE = {
    "id": "hygiene",
    "name": "Repository hygiene",
    "owner": "group:default/team-a",
    "levels": [],
    "filter": {"kinds": ["Component"]},
    "checks": [
        {"id": "has-dockerfile", "name": "Has a Dockerfile", "rule": {"op": "file", "path": "Dockerfile"}},
        {
            "id": "no-latest",
            "name": "Dockerfile does not use :latest",
            "rule": {
                "op": "file",
                "path": "Dockerfile",
                "rule": {"op": "not", "rule": {"op": "matches", "path": "", "pattern": "^FROM\\s+\\S+:latest\\b"}},
            },
        },
        {
            "id": "node-18",
            "name": "package.json engines.node >= 18",
            "rule": {
                "op": "file",
                "path": "package.json",
                "format": "json",
                "rule": {"op": "gte", "path": "engines.node", "value": "18", "compare_as": "semver"},
            },
        },
    ],
}


def git_host(requests: list[tuple[str, str | None]]) -> web.Application:
    """The repositories' `main` files; the STALLING ones answer after 30 s."""

    async def content_of(request: web.Request) -> bytes | None:
        info = request.match_info
        if (info["repo"], info["path"]) in STALLING:
            await asyncio.sleep(30)
        return FILES.get(info["repo"], {}).get(info["path"]) if info["ref"] == "main" else None

    return gitea_raw_host(requests, content_of)


@pytest_asyncio.fixture
async def suite(make_settings, catalog, http, tmp_path) -> AsyncIterator[dict[str, Any]]:
    """identity-sync, plugin-proxy with a `githost` endpoint, the git host, and the scorecard service reading that
    host's files through the proxy with its own service account's API key."""
    requests: list[tuple[str, str | None]] = []
    async with contextlib.AsyncExitStack() as stack:
        proxy, upstream, key = await git_host_behind_proxy(
            stack, make_settings, http, git_host(requests), "scorecard", name="githost"
        )
        key_file = tmp_path / "scorecard-api-key"
        key_file.write_text(key)
        authority = upstream.removeprefix("http://")
        settings = make_settings(
            ScorecardSettings,
            proxy_url=proxy.url,
            proxy_token=f"file:{key_file}",
            repository_hosts=f"{authority}=githost/{{owner}}/{{repo}}/raw/branch/{{ref}}/{{path}}",
            file_max_bytes=4096,
            file_fetch_timeout_seconds=2,
        )
        scorecard = await stack.enter_async_context(running_service(SCORECARD, settings))
        yield {"scorecard": scorecard, "upstream": upstream, "requests": requests}


def located(name: str, location: str) -> dict[str, Any]:
    entity = component(name)
    entity["metadata"]["annotations"] = {"backstage.io/source-location": location}
    return entity


async def test_file_checks_read_url_locations_through_the_proxy(suite, catalog, http):
    scorecard, upstream = suite["scorecard"], suite["upstream"]
    await create_entity(http, catalog, GROUP)
    for repo in FILES:
        await create_entity(http, catalog, located(repo, f"url:{upstream}/acme/{repo}/src/branch/main/"))
    await create_entity(http, catalog, located("elsewhere", "url:https://github.com/acme/elsewhere/tree/main/"))
    await create_scorecard(http, scorecard, HYGIENE)

    async def evaluated(name: str) -> dict[str, dict[str, Any]]:
        async def all_checks() -> dict[str, dict[str, Any]] | None:
            checks = checks_of(await report(http, scorecard, name), "hygiene")
            return checks if len(checks) == 3 else None

        return await eventually(all_checks, timeout=30)

    modern = await evaluated("modern")
    assert {c: r["status"] for c, r in modern.items()} == {
        "has-dockerfile": "pass",
        "no-latest": "pass",
        "node-18": "pass",
    }
    assert modern["node-18"]["found"] == ">=20"

    legacy = await evaluated("legacy")
    assert {c: r["status"] for c, r in legacy.items()} == {
        "has-dockerfile": "pass",
        "no-latest": "fail",
        "node-18": "fail",
    }
    assert "FROM node:latest" in legacy["no-latest"]["found"]
    assert legacy["node-18"]["found"] == "16.x"

    bare = await evaluated("bare")
    assert bare["has-dockerfile"]["status"] == "fail"
    for check in ("no-latest", "node-18"):
        assert bare[check]["status"] == "unknown" and "not found" in bare[check]["reason"]

    troubled = await evaluated("troubled")
    assert troubled["node-18"]["status"] == "unknown"
    assert "package.json is larger than 4096 bytes" in troubled["node-18"]["reason"]
    for check in ("has-dockerfile", "no-latest"):
        assert troubled[check]["status"] == "unknown" and "did not answer within 2s" in troubled[check]["reason"]

    elsewhere = await evaluated("elsewhere")
    assert all(r["status"] == "unknown" for r in elsewhere.values())
    assert "no repository host is configured for github.com" in elsewhere["has-dockerfile"]["reason"]

    # The proxy, not the scorecard, talks to the host; the scorecard's credential never reaches it.
    assert ("/acme/modern/raw/branch/main/Dockerfile", None) in suite["requests"]
