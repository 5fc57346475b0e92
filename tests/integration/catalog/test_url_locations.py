"""`url:` locations: fetched over HTTP from a real server on loopback (allowed by config), relative targets and
placeholders resolved against the URL, refresh; the fetcher refuses non-public addresses (after DNS, on every
redirect), oversized bodies and slow servers."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import pytest_asyncio
from aiohttp import web

from services.catalog.analyze import catalog_file_of
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from services.catalog.model import LocationSpec
from services.catalog.url_reader import DirectFetcher, FetchError, UrlPolicy, raw_content_url
from shared.service import running_service
from tests.helpers import eventually

ALL = """apiVersion: backstage.io/v1alpha1
kind: Location
metadata: {name: remote-root}
spec: {targets: [./team.yaml, ../other/svc.yaml, ./optional.yaml]}
"""
OPTIONAL = """apiVersion: backstage.io/v1alpha1
kind: Location
metadata: {name: maybe}
spec: {targets: [./not-there.yaml], presence: optional}
"""
TEAM = """apiVersion: backstage.io/v1alpha1
kind: Group
metadata: {name: team-a}
spec: {type: team, children: []}
---
apiVersion: backstage.io/v1alpha1
kind: API
metadata: {name: petstore}
spec: {type: openapi, lifecycle: production, owner: team-a, definition: {$text: ./openapi.yaml}}
"""
SVC = """apiVersion: backstage.io/v1alpha1
kind: Component
metadata: {{name: svc}}
spec: {{type: service, lifecycle: {lifecycle}, owner: team-a}}
"""
SNEAKY = """apiVersion: backstage.io/v1alpha1
kind: Location
metadata: {name: sneaky}
spec: {type: file, target: /etc/passwd}
"""


@pytest_asyncio.fixture
async def remote(aiohttp_server):
    """A small web server holding a catalog, plus routes that misbehave."""
    files = {
        "/catalog/all.yaml": ALL,
        "/catalog/team.yaml": TEAM,
        "/catalog/openapi.yaml": "openapi: 3.0.0\ninfo: {title: petstore}\n",
        "/catalog/optional.yaml": OPTIONAL,
        "/other/svc.yaml": SVC.format(lifecycle="experimental"),
        "/sneaky.yaml": SNEAKY,
    }

    async def serve(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in files:
            return web.Response(text=files[path])
        if path == "/moved":
            raise web.HTTPFound("/catalog/team.yaml")
        if path == "/to-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if path == "/to-ipv6-loopback":
            raise web.HTTPFound(f"http://[::1]:{request.url.port}/catalog/team.yaml")
        if path == "/big":
            return web.Response(body=b"#" * 2048)
        if path == "/slow":
            await asyncio.sleep(5)
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    server = await aiohttp_server(app)
    server.files = files
    return server


async def test_url_location_ingests_follows_relative_targets_and_refreshes(remote, make_settings, http):
    settings = make_settings(CatalogSettings, url_location_allow="127.0.0.1", refresh_interval_seconds=3600)
    async with running_service(CATALOG, settings) as catalog:
        target = str(remote.make_url("/catalog/all.yaml"))
        async with http.post(f"{catalog.url}/api/catalog/locations", json={"type": "url", "target": target}) as r:
            body = await r.json()
            assert r.status == 201, body
        assert body["location"].get("errors", []) == []
        assert body["entities"] == []  # as Backstage: only a dry run lists them
        async with http.get(f"{catalog.url}/api/catalog/entities") as r:
            names = sorted(e["metadata"]["name"] for e in await r.json())
        generated = "generated-" + hashlib.sha1(f"url:{target}".encode()).hexdigest()
        # A missing optional target is fine; the registered location's generated Location entity is listed too.
        assert names == [generated, "maybe", "petstore", "remote-root", "svc", "team-a"]
        async with http.get(f"{catalog.url}/api/catalog/entities/by-name/api/default/petstore") as r:
            api = await r.json()
        assert api["spec"]["definition"].startswith("openapi: 3.0.0")
        annotations = api["metadata"]["annotations"]
        assert annotations["backstage.io/managed-by-location"] == f"url:{remote.make_url('/catalog/team.yaml')}"
        assert annotations["backstage.io/managed-by-origin-location"] == f"url:{target}"
        async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/svc/ancestry") as r:
            assert (await r.json())["items"][0]["parentEntityRefs"] == ["location:default/remote-root"]

        remote.files["/other/svc.yaml"] = SVC.format(lifecycle="production")
        async with http.post(f"{catalog.url}/api/catalog/refresh", json={"entityRef": "component:svc"}) as r:
            assert r.status == 200
        async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/svc") as r:
            assert (await r.json())["spec"]["lifecycle"] == "production"

        sneaky = str(remote.make_url("/sneaky.yaml"))
        async with http.post(f"{catalog.url}/api/catalog/locations", json={"type": "url", "target": sneaky}) as r:
            errors = (await r.json())["location"]["errors"]
        assert ["may not name file targets" in e["message"] for e in errors] == [True]
        for bad in ("ftp://127.0.0.1/x.yaml", "not a url"):
            async with http.post(f"{catalog.url}/api/catalog/locations", json={"type": "url", "target": bad}) as r:
                assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.target"


async def test_loopback_is_refused_unless_allowed(remote, make_settings, http):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as catalog:
        target = str(remote.make_url("/catalog/all.yaml"))
        async with http.post(f"{catalog.url}/api/catalog/locations", json={"type": "url", "target": target}) as r:
            body = await r.json()
        assert body["entities"] == [] and "non-public address" in body["location"]["errors"][0]["message"]


def fetcher(allow: str = "127.0.0.1", **limits) -> DirectFetcher:
    return DirectFetcher(UrlPolicy.parse_allow(allow, **limits))


async def test_fetcher_checks_every_address_and_bounds_reads(remote):
    port = remote.port
    assert (await fetcher().fetch(str(remote.make_url("/moved")))).startswith(b"apiVersion")
    assert (await fetcher("localhost").fetch(f"http://localhost:{port}/catalog/all.yaml")).startswith(b"apiVersion")
    cases = [
        (fetcher(""), f"http://127.0.0.1:{port}/catalog/all.yaml", "non-public address"),
        (fetcher(""), f"http://localhost:{port}/catalog/all.yaml", "resolves to a non-public address"),
        (fetcher("localhost"), f"http://127.0.0.1:{port}/catalog/all.yaml", "non-public address"),
        (fetcher(), f"http://127.0.0.1:{port}/to-metadata", "169.254.169.254"),
        (fetcher(), f"http://127.0.0.1:{port}/to-ipv6-loopback", "::1"),
        (fetcher(max_bytes=1024), f"http://127.0.0.1:{port}/big", "larger than 1024 bytes"),
        (fetcher(timeout_seconds=0.3), f"http://127.0.0.1:{port}/slow", "did not answer"),
        (fetcher(), f"http://127.0.0.1:{port}/missing", "404"),
        (fetcher(), "file:///etc/passwd", "not an http(s) URL"),
    ]
    for client, url, message in cases:
        with pytest.raises(FetchError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await client.fetch(url)


def test_allow_lists_parse_or_fail():
    policy = UrlPolicy.parse_allow("10.0.0.0/8, git.internal, ::1")
    assert policy.allowed_hosts == {"git.internal"} and len(policy.allowed_networks) == 2
    with pytest.raises(ValueError):
        UrlPolicy.parse_allow("bad host!")
    with pytest.raises(ValueError):
        CatalogSettings(database_url="postgresql://x", nats_url="nats://x", url_location_allow="bad host!")


async def test_analyze_location_lists_existing_files_or_proposes_an_entity(remote, make_settings, http, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "catalog-info.yaml").write_text(SVC.format(lifecycle="production"))
    settings = make_settings(
        CatalogSettings,
        url_location_allow="127.0.0.1",
        file_location_roots=str(tmp_path),
        refresh_interval_seconds=3600,
    )
    async with running_service(CATALOG, settings) as catalog:
        url = f"{catalog.url}/api/catalog/analyze-location"
        team = str(remote.make_url("/catalog/team.yaml"))
        async with http.post(url, json={"location": {"type": "url", "target": team}}) as r:
            analysis = await r.json()
            assert r.status == 200, analysis
        assert analysis["generateEntities"] == []
        assert [(f["entity"]["metadata"]["name"], f["isRegistered"]) for f in analysis["existingEntityFiles"]] == [
            ("team-a", False),
            ("petstore", False),
        ]
        assert analysis["existingEntityFiles"][0]["location"] == {"type": "url", "target": team}

        repo = {"type": "file", "target": str(tmp_path / "repo")}
        async with http.post(
            f"{catalog.url}/api/catalog/locations", json={**repo, "target": f"{repo['target']}/catalog-info.yaml"}
        ) as r:
            assert r.status == 201
        async with http.post(url, json={"location": repo}) as r:
            files = (await r.json())["existingEntityFiles"]
        assert [(f["entity"]["metadata"]["name"], f["isRegistered"]) for f in files] == [("svc", True)]

        empty = str(remote.make_url("/nothing-here/my-service.git"))
        async with http.post(url, json={"location": {"type": "url", "target": empty}}) as r:
            analysis = await r.json()
        assert analysis["existingEntityFiles"] == []
        (proposal,) = analysis["generateEntities"]
        assert proposal["entity"]["metadata"]["name"] == "my-service"
        assert proposal["fields"][0]["field"] == "spec.owner" and proposal["fields"][0]["state"] == "needsUserInput"

        blocked = {"type": "url", "target": "http://169.254.169.254/latest/"}
        async with http.post(url, json={"location": blocked}) as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.location.target"
        async with http.post(url, json={"location": {"type": "file", "target": "/etc"}}) as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.location.target"
        async with http.post(url, json={"location": repo, "catalogFilename": "../x.yaml"}) as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.catalogFilename"


def test_code_host_pages_are_fetched_raw():
    blob = "https://github.com/backstage/software-templates/blob/main/scaffolder-templates/docs-template/template.yaml"
    assert raw_content_url(blob) == (
        "https://raw.githubusercontent.com/backstage/software-templates/main/scaffolder-templates/docs-template/template.yaml"
    )
    assert raw_content_url("https://gitlab.com/g/p/-/blob/main/catalog-info.yaml#L1") == (
        "https://gitlab.com/g/p/-/raw/main/catalog-info.yaml"
    )
    for unchanged in ("https://github.com/backstage/backstage", "https://example.com/blob/x/y/z/catalog.yaml"):
        assert raw_content_url(unchanged) == unchanged


def test_analysis_looks_for_the_catalog_file_where_backstage_does():
    def file_of(type_, target):
        return catalog_file_of(LocationSpec(type_, target), "catalog-info.yaml").target

    assert file_of("url", "https://github.com/acme/shop.git") == (
        "https://github.com/acme/shop/blob/HEAD/catalog-info.yaml"
    )
    assert file_of("url", "https://github.com/acme/shop/tree/main/svc/") == (
        "https://github.com/acme/shop/blob/main/svc/catalog-info.yaml"
    )
    assert file_of("url", "https://git.example.com/x/catalog.yml") == "https://git.example.com/x/catalog.yml"
    assert file_of("file", "/srv/repo.git") == "/srv/repo.git/catalog-info.yaml"


async def test_url_locations_are_read_again_periodically(remote, make_settings, http):
    settings = make_settings(CatalogSettings, url_location_allow="127.0.0.1", refresh_interval_seconds=0.3)
    async with running_service(CATALOG, settings) as catalog:
        target = str(remote.make_url("/other/svc.yaml"))
        async with http.post(f"{catalog.url}/api/catalog/locations", json={"type": "url", "target": target}) as r:
            assert r.status == 201
        remote.files["/other/svc.yaml"] = SVC.format(lifecycle="deprecated")

        async def lifecycle():
            async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/svc") as r:
                return (await r.json())["spec"]["lifecycle"] == "deprecated"

        assert await eventually(lifecycle, timeout=10)
