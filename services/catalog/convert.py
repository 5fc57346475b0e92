"""`POST /api/catalog/convert`: Backstage entity YAML ↔ the scoped native form, so teams can migrate.

The native form names where an entity lives and lifts the fields every kind has to the top, as Harness IDP's
native entities do; everything else stays under `metadata` and `spec` unchanged:

    apiVersion: seed-idp.dev/v1
    kind: Component
    scope: account.acme.payments          # design.md §5
    ref: component:default/checkout@account.acme.payments   # computed: the scoped ref
    identifier: checkout                  # metadata.name
    namespace: default                    # metadata.namespace, only when the source sets it
    title: Checkout                       # metadata.title
    type: service                         # spec.type
    lifecycle: production                 # spec.lifecycle
    owner: team-payments                  # spec.owner, as written
    metadata: {description: ..., tags: [...], annotations: {...}}
    spec: {providesApis: [...]}
    source: {apiVersion: backstage.io/v1alpha1}

References inside `spec` stay as written, so they keep resolving relative to the entity. Backstage YAML has no
place for a scope: converting back writes it as the `seed-idp.dev/scope` annotation when it is not `account`,
and converting to native reads that annotation, so both directions round-trip without loss. Every document is
validated (Backstage's rules, or the registered schema of a custom kind); any problem refuses the whole
conversion with the paths at fault.
"""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
import msgspec
import yaml

from services.catalog import kinds as kinds_module
from services.catalog.entity_ref import ref_of
from services.catalog.kinds import Kinds
from services.catalog.model import SCOPE_ANNOTATION, ingestible_document
from services.catalog.scopes import scoped_ref
from services.catalog.service import prepare_document
from shared.errors import FieldError, InputError
from shared.scopes import check_scope
from shared.yamlsafe import YamlError, iter_yaml_documents

NATIVE_API_VERSION = "seed-idp.dev/v1"
DEFAULT_BACKSTAGE_API_VERSION = "backstage.io/v1alpha1"
_LIFTED_SPEC = ("type", "lifecycle", "owner")
_NATIVE_FIELD = {
    ".metadata.name": ".identifier",
    ".metadata.namespace": ".namespace",
    ".metadata.title": ".title",
    **{f".spec.{field}": f".{field}" for field in _LIFTED_SPEC},
}
"""Where a problem found in the Backstage form sits in the native form."""


class ConvertRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Documents as YAML text or as JSON objects (one of the two), and the form wanted."""

    to: Literal["native", "backstage"]
    yaml: str | None = None
    entities: list[dict[str, Any]] | None = None


class ConvertResult(msgspec.Struct, frozen=True):
    entities: list[dict[str, Any]]
    yaml: str


def declared_scope(document: dict[str, Any], default: str) -> str:
    """The scope a Backstage document names in its `seed-idp.dev/scope` annotation, else `default`."""
    annotations = (document.get("metadata") or {}).get("annotations") or {}
    return annotations.get(SCOPE_ANNOTATION, default)


def to_native(document: dict[str, Any], scope: str) -> dict[str, Any]:
    """A valid Backstage entity as written (server fields and the scope annotation already dropped, namespace
    not defaulted) in the native form."""
    metadata = dict(document.get("metadata") or {})
    spec = dict(document.get("spec") or {})
    native: dict[str, Any] = {
        "apiVersion": NATIVE_API_VERSION,
        "kind": document["kind"],
        "scope": scope,
        "ref": scoped_ref(ref_of(document), scope),
        "identifier": metadata.pop("name"),
    }
    for key, field in (("namespace", "namespace"), ("title", "title")):
        if field in metadata:
            native[key] = metadata.pop(field)
    native.update({field: spec.pop(field) for field in _LIFTED_SPEC if field in spec})
    if metadata:
        native["metadata"] = metadata
    if "spec" in document:
        native["spec"] = spec
    native["source"] = {"apiVersion": document["apiVersion"]}
    return native


class NativeEntity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The native form as accepted back (`ref` is computed, so it is only checked for consistency)."""

    apiVersion: Literal["seed-idp.dev/v1"]
    kind: str
    scope: str
    identifier: str
    ref: str | None = None
    namespace: str | None = None
    title: str | None = None
    type: Any = msgspec.UNSET
    lifecycle: Any = msgspec.UNSET
    owner: Any = msgspec.UNSET
    metadata: dict[str, Any] = {}
    spec: dict[str, Any] | None = None
    source: dict[str, str] = {}


def to_backstage(native: NativeEntity) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": native.identifier}
    if native.namespace is not None:
        metadata["namespace"] = native.namespace
    if native.title is not None:
        metadata["title"] = native.title
    metadata.update(native.metadata)
    if native.scope != "account":
        metadata["annotations"] = {**(metadata.get("annotations") or {}), SCOPE_ANNOTATION: native.scope}
    lifted = {f: getattr(native, f) for f in _LIFTED_SPEC if getattr(native, f) is not msgspec.UNSET}
    document: dict[str, Any] = {
        "apiVersion": native.source.get("apiVersion", DEFAULT_BACKSTAGE_API_VERSION),
        "kind": native.kind,
        "metadata": metadata,
    }
    if native.spec is not None or lifted:
        document["spec"] = {**lifted, **(native.spec or {})}
    return document


def _documents(request: ConvertRequest) -> tuple[str, list[Any]]:
    """Where the documents came from (for error paths) and the documents."""
    if (request.yaml is None) == (request.entities is None):
        raise InputError.for_field("$", "give the documents either as `yaml` or as `entities`")
    if request.entities is not None:
        return "$.entities", list(request.entities)
    documents = []
    for index, value in iter_yaml_documents(request.yaml or ""):
        if isinstance(value, YamlError):
            raise InputError.for_field(f"$.yaml[{index}]", str(value))
        documents.append(value)
    return "$.yaml", documents


def _check(document: Any, kinds: Kinds, path: str, errors: list[FieldError], *, native: bool = False) -> bool:
    try:
        prepare_document(document, kinds)
    except InputError as exc:
        for error in exc.errors:
            field = error.field.removeprefix("$")
            errors.append(FieldError(path + (_NATIVE_FIELD.get(field, field) if native else field), error.message))
        return False
    return True


def _native(value: Any, path: str, errors: list[FieldError]) -> NativeEntity | None:
    try:
        native = msgspec.convert(value, NativeEntity)
        check_scope(native.scope, f"{path}.scope")
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        errors.append(FieldError(path + at.rstrip("`"), message))
        return None
    except InputError as exc:
        errors += exc.errors
        return None
    return native


async def convert(pool: asyncpg.Pool, scope: str, request: ConvertRequest) -> ConvertResult:
    check_scope(scope)
    origin, documents = _documents(request)
    async with pool.acquire() as conn:
        kinds = await kinds_module.load(conn)
    errors: list[FieldError] = []
    converted = []
    for index, value in enumerate(documents):
        path = f"{origin}[{index}]"
        if request.to == "native":
            if _check(value, kinds, path, errors):
                field = f"{path}.metadata.annotations.{SCOPE_ANNOTATION}"
                try:
                    entity_scope = check_scope(declared_scope(value, scope), field)
                    converted.append(to_native(ingestible_document(value), entity_scope))
                except InputError as exc:
                    errors += exc.errors
            continue
        native = _native(value, path, errors)
        if native is None:
            continue
        document = to_backstage(native)
        if _check(document, kinds, path, errors, native=True):
            if native.ref is not None and native.ref != scoped_ref(ref_of(document), native.scope):
                errors.append(FieldError(f"{path}.ref", "does not match kind, namespace, identifier and scope"))
            converted.append(document)
    if errors:
        raise InputError(f"{len(errors)} problems in the documents: {errors[0].message}", errors=errors)
    return ConvertResult(converted, yaml.safe_dump_all(converted, sort_keys=False, allow_unicode=True))
