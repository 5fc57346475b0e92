"""Backstage's official `@backstage/catalog-client` (npm) works against our catalog unchanged."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service
from tests.conftest import DEV_TOKEN

CLIENT_VERSION = "1.16.2"
PROBE = Path(__file__).with_name("catalog_client_probe.cjs")


@pytest.fixture(scope="session")
def client_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the Backstage catalog client installed from the npm registry."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("node and npm are needed to run Backstage's catalog client")
    directory = tmp_path_factory.mktemp("backstage-client")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", f"@backstage/catalog-client@{CLIENT_VERSION}"],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.copy(PROBE, directory / PROBE.name)
    return directory


@pytest_asyncio.fixture
async def catalog(make_settings, http, tmp_path):
    (tmp_path / "catalog-info.yaml").write_text(
        "apiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata: {name: team-b}\nspec: {type: team, children: []}\n"
    )
    async with running_service(CATALOG, make_settings(CatalogSettings, file_location_roots=str(tmp_path))) as service:
        entities = [
            {"kind": "Group", "metadata": {"name": "team-a"}, "spec": {"type": "team", "children": []}},
            {
                "kind": "Component",
                "metadata": {"name": "petstore"},
                "spec": {"type": "service", "lifecycle": "production", "owner": "team-a"},
            },
            {
                "kind": "Component",
                "metadata": {"name": "website"},
                "spec": {"type": "website", "lifecycle": "production", "owner": "team-a"},
            },
        ]
        for entity in entities:
            body = {"apiVersion": "backstage.io/v1alpha1", **entity}
            async with http.post(f"{service.url}/api/catalog/entities", json=body) as r:
                assert r.status == 201, await r.text()
        yield service


async def test_the_official_catalog_client_reads_and_deletes(client_dir, catalog, tmp_path):
    process = await asyncio.create_subprocess_exec(
        "node",
        PROBE.name,
        catalog.url,
        DEV_TOKEN,
        str(tmp_path),
        cwd=client_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout)
    assert seen == {
        "entities": ["petstore", "website"],
        "byRef": "petstore",
        "missing": None,
        "byRefs": ["petstore", None],
        "query": {"total": 2, "first": "petstore", "hasNext": True},
        "query2": "website",
        "facets": {
            "spec.type": [
                {"value": "service", "count": 1},
                {"value": "team", "count": 1},
                {"value": "website", "count": 1},
            ]
        },
        "predicate": {"total": 1, "first": "petstore"},
        "predicateFacets": {"kind": [{"value": "Component", "count": 2}]},
        "predicateByRefs": [None, "website"],
        "ancestry": 1,
        "analyzed": [["team-b", False]],
        "error": {"status": 400, "name": "InputError"},
        "ownedBy": ["group:default/team-a"],
        "afterDelete": None,
    }
