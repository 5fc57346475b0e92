"""File rules read only inside the configured roots, from `file:` locations, and bounded in size."""

from __future__ import annotations

from services.scorecard.files import LocalFiles
from services.scorecard.rules import Unreadable


def entity(location: str, annotation: str = "backstage.io/managed-by-location") -> dict:
    return {"metadata": {"annotations": {annotation: location}}}


def test_reads_next_to_the_catalog_file_and_inside_the_roots(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "secret").write_text("s")
    files = LocalFiles((repo,), max_bytes=10)
    located = entity(f"file:{repo}/catalog-info.yaml")
    assert files.read(located, "Dockerfile") == b"FROM x\n"
    assert files.read(entity(f"file:{repo}/", "backstage.io/source-location"), "Dockerfile") == b"FROM x\n"
    missing = files.read(located, "README.md")
    assert isinstance(missing, Unreadable) and missing.missing
    outside = files.read(entity(f"file:{tmp_path}/catalog-info.yaml"), "secret")
    assert isinstance(outside, Unreadable) and "outside" in outside.reason and not outside.missing
    (repo / "big").write_text("x" * 11)
    assert "larger than" in files.read(located, "big").reason


def test_other_locations_wait_for_the_plugin_proxy():
    files = LocalFiles(())
    assert "plugin-proxy" in files.read(entity("url:https://github.com/a/b/blob/main/catalog-info.yaml"), "x").reason
    assert "no source location" in files.read({"metadata": {}}, "x").reason
