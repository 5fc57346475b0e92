"""Backstage's `POST /analyze-location`: what registering a location would bring in, without registering it.

As Backstage's `RepoLocationAnalyzer` does, a target that is not a YAML file (a repository or a directory)
is looked at for `catalogFilename` (default `catalog-info.yaml`). Entities found are listed as
`existingEntityFiles` (with whether their location is registered already); when there are none, a Component
named after the target is proposed in `generateEntities`, with the fields a user still has to fill in. The
target is read with the same rules and limits as a registered location.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from services.catalog import ingestion, store
from services.catalog import kinds as kinds_module
from services.catalog.entity_ref import ref_of
from services.catalog.model import LocationSpec
from services.catalog.service import prepare_document
from shared.errors import FieldError, InputError
from shared.scopes import check_scope

DEFAULT_CATALOG_FILENAME = "catalog-info.yaml"
_NOT_FOUND = ("does not exist", "was not found (404)")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class AnalyzeLocationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    location: LocationSpec
    catalogFilename: str | None = None


class AnalyzeLocationResponse(msgspec.Struct, frozen=True):
    existingEntityFiles: list[dict[str, Any]]
    generateEntities: list[dict[str, Any]]


def catalog_file_of(spec: LocationSpec, filename: str) -> LocationSpec:
    """The catalog file to read for a target: itself if it is a YAML file, else `filename` inside it."""
    if spec.target.endswith((".yaml", ".yml")):
        return spec
    target = spec.target.rstrip("/")
    if spec.type == "url" and urlsplit(target).hostname == "github.com":
        # Repository and directory pages name no file: read the default branch (as Backstage's GitHub
        # analyzer does) or the directory's branch.
        target = target.removesuffix(".git").replace("/tree/", "/blob/", 1)
        if urlsplit(target).path.count("/") == 2:
            target += "/blob/HEAD"
    return LocationSpec(type=spec.type, target=f"{target}/{filename}")


def _proposed_name(target: str) -> str:
    segment = posixpath.basename(target.rstrip("/").split("?")[0]).removesuffix(".git")
    name = _NAME_CHARS.sub("-", segment).strip("-_.")[:63].strip("-_.")
    return name or "my-component"


async def analyze_location(
    pool: asyncpg.Pool, policy: ingestion.IngestionPolicy, scope: str, request: AnalyzeLocationRequest
) -> AnalyzeLocationResponse:
    check_scope(scope)
    filename = request.catalogFilename or DEFAULT_CATALOG_FILENAME
    if "/" in filename or filename in (".", ".."):
        raise InputError.for_field("$.catalogFilename", "a file name, without directories")
    spec = catalog_file_of(request.location, filename)
    try:
        result = await ingestion.read(spec, policy)
    except InputError as exc:  # it names the fields of a location; here they sit under `location`
        fields = [FieldError(e.field.replace("$.", "$.location.", 1), e.message) for e in exc.errors]
        raise InputError(exc.detail, errors=fields) from None
    problems = [e for e in result.errors if not any(marker in e.message for marker in _NOT_FOUND)]
    if problems and not result.entities:
        raise InputError.for_field("$.location.target", problems[0].message)
    async with pool.acquire() as conn:
        kinds = await kinds_module.load(conn)
        existing = []
        for read_entity in result.entities:
            try:
                document, _ = prepare_document(read_entity.document, kinds)
            except InputError:
                continue
            type_, _, target = read_entity.location.partition(":")
            # Registered: the file itself is a location, or the catalog holds this entity from this file.
            stored = await store.get_by_ref(conn, scope, str(ref_of(document)))
            registered = await store.find_location(conn, scope, type_, target) is not None or (
                stored is not None and stored.location_key == read_entity.location_key
            )
            existing.append(
                {"location": {"type": type_, "target": target}, "isRegistered": registered, "entity": document}
            )
    if existing:
        return AnalyzeLocationResponse(existingEntityFiles=existing, generateEntities=[])
    proposed = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": _proposed_name(request.location.target)},
        "spec": {"type": "other", "lifecycle": "unknown"},
    }
    owner = {
        "field": "spec.owner",
        "state": "needsUserInput",
        "value": None,
        "description": "Entity reference to the owner of the component",
    }
    return AnalyzeLocationResponse(existingEntityFiles=[], generateEntities=[{"entity": proposed, "fields": [owner]}])
