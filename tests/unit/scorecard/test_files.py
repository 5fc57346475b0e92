"""File rules read `file:` locations only inside the configured roots, `url:` locations through the raw path of
the proxy endpoint configured for their host, and files bounded in size."""

from __future__ import annotations

from services.scorecard.files import LocalFiles, RepositoryFiles, source_of
from services.scorecard.rules import Unreadable


def entity(location: str, annotation: str = "backstage.io/managed-by-location") -> dict:
    return {"metadata": {"annotations": {annotation: location}}}


async def test_reads_next_to_the_catalog_file_and_inside_the_roots(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "secret").write_text("s")
    files = RepositoryFiles(LocalFiles((repo,), max_bytes=10), None)
    located = entity(f"file:{repo}/catalog-info.yaml")
    assert await files.read(located, "Dockerfile") == b"FROM x\n"
    assert await files.read(entity(f"file:{repo}", "backstage.io/source-location"), "Dockerfile") == b"FROM x\n"
    missing = await files.read(located, "README.md")
    assert isinstance(missing, Unreadable) and missing.missing
    outside = await files.read(entity(f"file:{tmp_path}/catalog-info.yaml"), "secret")
    assert isinstance(outside, Unreadable) and "outside" in outside.reason and not outside.missing
    (repo / "big").write_text("x" * 11)
    assert "larger than" in (await files.read(located, "big")).reason


async def test_url_locations_need_a_proxy_and_other_locations_are_not_read():
    files = RepositoryFiles(LocalFiles(()), None)
    url = await files.read(entity("url:https://github.com/a/b/blob/main/catalog-info.yaml"), "x")
    assert "IDP_PROXY_URL" in url.reason
    assert "no source location" in (await files.read({"metadata": {}}, "x")).reason
    assert "not readable" in (await files.read(entity("gitlab:a/b/c.yaml"), "x")).reason


def test_the_source_is_the_source_location_directory_or_the_catalog_files_directory():
    assert source_of(entity("url:https://h/a/b/tree/main/svc", "backstage.io/source-location")) == (
        "url",
        "https://h/a/b/tree/main/svc/",
    )
    assert source_of(entity("url:https://h/a/b/blob/main/svc/catalog-info.yaml")) == (
        "url",
        "https://h/a/b/blob/main/svc/",
    )
