"""Custom kinds: a JSON Schema per kind and apiVersion, registered through `/api/catalog/kinds`.

An entity whose kind is neither built in nor registered is refused, naming `$.kind`; one whose kind is
registered but not at its apiVersion is refused naming `$.apiVersion`; otherwise the whole entity is
validated against the schema (the built-in envelope and metadata rules still apply first), and each error
names the JSON path at fault. A registration may also say which spec fields emit relations, as Backstage's
catalog model layers do with `relationFields`.

Every write reads the registered kinds in its own transaction (`load`), under a shared lock that kind changes
take exclusively, so replicas never disagree about them and a schema change never races a write validated
against the old one; compiled validators are cached by the registration's etag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Annotated, Any

import asyncpg
import jsonschema
import msgspec

from services.catalog import store
from services.catalog.relations import RelationRule
from services.catalog.validation import BUILTIN_KINDS, is_valid_api_version, is_valid_kind
from shared.db import transaction
from shared.errors import ConflictError, FieldError, InputError, NotFoundError
from shared.etag import check_if_match
from shared.events import Actor, ResourceRef, new_event
from shared.outbox import write_event

_RELATION_TYPE = re.compile(r"^[a-zA-Z][a-zA-Z0-9]{0,62}$")
_canonical_json = msgspec.json.Encoder(order="sorted")
MAX_ERRORS = 20
"""At most this many schema errors are reported for one entity."""


class RelationField(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`spec.<field>` (a ref or a list of refs) emits `forward` on the entity and `reverse` on the target."""

    field: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
    forward: str
    reverse: str
    defaultKind: str | None = None


class KindSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of `PUT /kinds/{kind}/{apiVersion}`."""

    schema: dict[str, Any]
    relations: Annotated[list[RelationField], msgspec.Meta(max_length=50)] = []


class KindRegistration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of `POST /kinds`."""

    kind: str
    apiVersion: str
    schema: dict[str, Any]
    relations: Annotated[list[RelationField], msgspec.Meta(max_length=50)] = []


class KindView(msgspec.Struct, frozen=True):
    kind: str
    apiVersion: str
    schema: dict[str, Any]
    relations: list[RelationField]
    etag: str


class KindList(msgspec.Struct, frozen=True):
    items: list[KindView]


@dataclasses.dataclass(frozen=True)
class Kinds:
    """The custom kinds one write sees: `(lower-cased kind, apiVersion)` → registration."""

    registered: dict[tuple[str, str], KindView]

    def validate(self, document: dict[str, Any]) -> list[FieldError]:
        """The entity's problems as a custom kind; none for built-in kinds (validated elsewhere)."""
        kind, api_version = document.get("kind"), document.get("apiVersion")
        if not is_valid_kind(kind) or kind.lower() in BUILTIN_KINDS:
            return []
        view = self.registered.get((kind.lower(), api_version))
        if view is None:
            versions = sorted(v for k, v in self.registered if k == kind.lower())
            if versions:
                return [FieldError("$.apiVersion", f"kind {kind} is registered for apiVersion {', '.join(versions)}")]
            return [FieldError("$.kind", f"unknown kind {kind}: register a JSON Schema for it at /api/catalog/kinds")]
        errors = sorted(_validator(view).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
        return [FieldError(_json_path(e.absolute_path), e.message) for e in errors[:MAX_ERRORS]]

    def relation_rules(self, document: dict[str, Any]) -> tuple[RelationRule, ...]:
        kind = str(document.get("kind", "")).lower()
        view = self.registered.get((kind, document.get("apiVersion")))
        if view is None:
            return ()
        return tuple(RelationRule(r.field, r.defaultKind, r.forward, r.reverse) for r in view.relations)


_validators: dict[str, jsonschema.protocols.Validator] = {}


def _validator(view: KindView) -> jsonschema.protocols.Validator:
    validator = _validators.get(view.etag)
    if validator is None:
        if len(_validators) > 1000:
            _validators.clear()
        validator = _validators[view.etag] = jsonschema.validators.validator_for(view.schema)(view.schema)
    return validator


def _json_path(path: Any) -> str:
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _view(row: asyncpg.Record) -> KindView:
    return KindView(
        kind=row["kind"],
        apiVersion=row["api_version"],
        schema=row["schema"],
        relations=msgspec.convert(row["relations"], list[RelationField]),
        etag=row["etag"],
    )


async def load(conn: asyncpg.Connection) -> Kinds:
    """The kinds a write validates against; a concurrent schema change waits until the write commits."""
    await store.lock_kinds(conn, exclusive=False)
    rows = await store.kind_rows(conn)
    return Kinds({(row["kind_key"], row["api_version"]): _view(row) for row in rows})


def _check_registration(kind: str, api_version: str, body: KindSchema | KindRegistration) -> None:
    errors = []
    if not is_valid_kind(kind):
        errors.append(FieldError("$.kind", "a kind is 1-63 characters [a-zA-Z][a-z0-9A-Z]*"))
    elif kind.lower() in BUILTIN_KINDS:
        errors.append(FieldError("$.kind", f"{kind} is a built-in kind; its rules are Backstage's"))
    if not is_valid_api_version(api_version):
        errors.append(FieldError("$.apiVersion", "an apiVersion is [<dns subdomain>/]<version>, e.g. example.com/v1"))
    try:
        jsonschema.validators.validator_for(body.schema).check_schema(body.schema)
    except jsonschema.SchemaError as exc:
        errors.append(FieldError(_json_path(["schema", *exc.absolute_path]), exc.message))
    for i, relation in enumerate(body.relations):
        for name in ("forward", "reverse"):
            if not _RELATION_TYPE.match(getattr(relation, name)):
                errors.append(FieldError(f"$.relations[{i}].{name}", "a relation type is [a-zA-Z][a-zA-Z0-9]*"))
        if relation.defaultKind is not None and not is_valid_kind(relation.defaultKind):
            errors.append(FieldError(f"$.relations[{i}].defaultKind", "not a valid kind"))
    if errors:
        raise InputError(f"the kind registration is not valid: {errors[0].message}", errors=errors)


def _etag(body: KindSchema | KindRegistration) -> str:
    return hashlib.sha256(_canonical_json.encode([body.schema, body.relations])).hexdigest()[:32]


def _event(verb: str, actor: Actor, kind: str, api_version: str, data: dict[str, Any]):
    return new_event(
        f"catalog.kind.{verb}",
        source="catalog",
        actor=actor,
        resource=ResourceRef("kind", f"{kind}@{api_version}"),
        data={"kind": kind, "apiVersion": api_version, **data},
    )


async def register(pool: asyncpg.Pool, actor: Actor, body: KindRegistration) -> KindView:
    _check_registration(body.kind, body.apiVersion, body)
    view = KindView(body.kind, body.apiVersion, body.schema, body.relations, _etag(body))
    try:
        async with transaction(pool) as conn:
            await store.lock_kinds(conn, exclusive=True)
            await store.insert_kind(conn, view.kind.lower(), view)
            await write_event(conn, _event("registered", actor, view.kind, view.apiVersion, {"etag": view.etag}))
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"kind {body.kind} is already registered for apiVersion {body.apiVersion}") from None
    return view


async def list_kinds(pool: asyncpg.Pool) -> KindList:
    async with pool.acquire() as conn:
        return KindList([_view(row) for row in await store.kind_rows(conn)])


async def get_kind(pool: asyncpg.Pool, kind: str, api_version: str) -> KindView:
    async with pool.acquire() as conn:
        row = await store.kind_row(conn, kind.lower(), api_version)
    if row is None:
        raise NotFoundError(f"no kind {kind} registered for apiVersion {api_version}")
    return _view(row)


async def replace(
    pool: asyncpg.Pool, actor: Actor, kind: str, api_version: str, body: KindSchema, if_match: str | None
) -> KindView:
    """Replace a kind's schema; refused while an existing entity of the kind would not be valid under it."""
    _check_registration(kind, api_version, body)
    async with transaction(pool) as conn:
        await store.lock_kinds(conn, exclusive=True)
        row = await store.kind_row(conn, kind.lower(), api_version)
        if row is None:
            raise NotFoundError(f"no kind {kind} registered for apiVersion {api_version}")
        check_if_match(if_match, row["etag"])
        view = KindView(row["kind"], api_version, body.schema, body.relations, _etag(body))
        if view.etag == row["etag"]:
            return view
        kinds = Kinds({(kind.lower(), api_version): view})
        invalid = [
            FieldError(f"entity {e.ref} at {e.scope}", f"{problems[0].field}: {problems[0].message}")
            for e in await store.entities_of_kind(conn, kind.lower(), api_version)
            if (problems := kinds.validate(e.served_document))
        ]
        if invalid:
            raise ConflictError(
                f"{len(invalid)} existing {kind} entities would not be valid under the new schema",
                errors=invalid[:MAX_ERRORS],
            )
        await store.update_kind(conn, kind.lower(), view)
        await write_event(
            conn, _event("replaced", actor, view.kind, api_version, {"etag": view.etag, "previousEtag": row["etag"]})
        )
    return view


async def delete(pool: asyncpg.Pool, actor: Actor, kind: str, api_version: str, if_match: str | None) -> None:
    """Unregister a kind; refused while entities of it exist, as they could no longer be validated."""
    async with transaction(pool) as conn:
        await store.lock_kinds(conn, exclusive=True)
        row = await store.kind_row(conn, kind.lower(), api_version)
        if row is None:
            raise NotFoundError(f"no kind {kind} registered for apiVersion {api_version}")
        check_if_match(if_match, row["etag"])
        remaining = await store.entities_of_kind(conn, kind.lower(), api_version, limit=1)
        if remaining:
            raise ConflictError(f"entities of kind {row['kind']} exist (e.g. {remaining[0].ref}); delete them first")
        await store.delete_kind(conn, kind.lower(), api_version)
        await write_event(conn, _event("deleted", actor, row["kind"], api_version, {"etag": row["etag"]}))
