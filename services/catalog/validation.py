"""Entity validation with Backstage's rules (`@backstage/catalog-model`: the envelope schema, the default
entity policies, `KubernetesValidatorFunctions`, `makeValidator`, and the built-in kinds' required fields).

`validate_entity` returns every problem as a `FieldError` naming the field, so one answer tells a user all
that is wrong with a document. An empty list means Backstage would accept the entity too.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from services.catalog.entity_ref import DEFAULT_NAMESPACE
from shared.errors import FieldError

ROOT_FIELDS = {"apiVersion", "kind", "metadata", "spec"}
"""Fields an ingested entity may carry; `relations` and `status` are computed by the catalog."""
OUTPUT_FIELDS = {"relations", "status"}

_OBJECT_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_LABEL = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_KIND = re.compile(r"^[a-zA-Z][a-z0-9A-Z]*$")
_API_VERSION_SUFFIX = re.compile(r"^[a-z0-9A-Z]+$")
_TAG = re.compile(r"^[a-z0-9:+#]+(-[a-z0-9:+#]+)*$")
_LEARN_MORE = "To learn more about catalog file format, visit: https://backstage.io/docs/features/software-catalog/descriptor-format"

# Required spec fields of the built-in kinds, and the type each spec field must have when present.
KIND_SPEC_RULES: dict[str, dict[str, tuple[type, bool]]] = {
    "component": {
        "type": (str, True),
        "lifecycle": (str, True),
        "owner": (str, True),
        "system": (str, False),
        "subcomponentOf": (str, False),
        "providesApis": (list, False),
        "consumesApis": (list, False),
        "dependsOn": (list, False),
        "dependencyOf": (list, False),
    },
    "api": {
        "type": (str, True),
        "lifecycle": (str, True),
        "owner": (str, True),
        "definition": (str, True),
        "system": (str, False),
    },
    "resource": {
        "type": (str, True),
        "owner": (str, True),
        "system": (str, False),
        "dependsOn": (list, False),
        "dependencyOf": (list, False),
    },
    "system": {"owner": (str, True), "domain": (str, False), "type": (str, False)},
    "domain": {"owner": (str, True), "subdomainOf": (str, False), "type": (str, False)},
    "group": {
        "type": (str, True),
        "children": (list, True),
        "parent": (str, False),
        "members": (list, False),
        "profile": (dict, False),
    },
    "user": {"memberOf": (list, False), "profile": (dict, False)},
    "location": {"type": (str, False), "target": (str, False), "targets": (list, False), "presence": (str, False)},
    "template": {
        "type": (str, True),
        "steps": (list, True),
        "parameters": ((dict, list), False),
        "output": (dict, False),
        "owner": (str, False),
        "lifecycle": (str, False),
    },
}
BUILTIN_KINDS = frozenset(KIND_SPEC_RULES)
_STRING_LIST_FIELDS = {
    "providesApis",
    "consumesApis",
    "dependsOn",
    "dependencyOf",
    "children",
    "members",
    "memberOf",
    "targets",
}


def is_valid_object_name(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 63 and bool(_OBJECT_NAME.match(value))


def is_valid_dns_label(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 63 and bool(_DNS_LABEL.match(value))


def is_valid_dns_subdomain(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 253 and all(is_valid_dns_label(p) for p in value.split("."))


def is_valid_api_version(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = value.split("/")
    if len(parts) > 2:
        return False
    suffix = parts[-1]
    prefix_ok = len(parts) == 1 or is_valid_dns_subdomain(parts[0])
    return prefix_ok and 1 <= len(suffix) <= 63 and bool(_API_VERSION_SUFFIX.match(suffix))


def is_valid_kind(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 63 and bool(_KIND.match(value))


def is_valid_prefixed_key(value: Any) -> bool:
    """Label and annotation keys: `[<dns subdomain>/]<object name>`."""
    if not isinstance(value, str):
        return False
    parts = value.split("/")
    if len(parts) == 1:
        return is_valid_object_name(parts[0])
    return len(parts) == 2 and is_valid_dns_subdomain(parts[0]) and is_valid_object_name(parts[1])


def is_valid_label_value(value: Any) -> bool:
    return value == "" or is_valid_object_name(value)


def is_valid_tag(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 63 and bool(_TAG.match(value))


def is_valid_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc or parts.path)


def _invalid(field: str, expected: str, found: Any) -> FieldError:
    return FieldError(f"$.{field}", f'"{field}" is not valid; expected {expected} but found "{found}". {_LEARN_MORE}')


def validate_entity(entity: Any) -> list[FieldError]:
    """All the problems Backstage's default policies and kind validators would report for `entity`."""
    if not isinstance(entity, dict):
        return [FieldError("$", "an entity must be an object")]
    errors = [
        FieldError(f"$.{key}", f"Unknown field {key}") for key in entity if key not in ROOT_FIELDS | OUTPUT_FIELDS
    ]
    errors += _validate_envelope(entity)
    metadata = entity.get("metadata")
    if isinstance(metadata, dict):
        errors += _validate_metadata(metadata)
    spec = entity.get("spec")
    if spec is not None and not isinstance(spec, dict):
        errors.append(FieldError("$.spec", "spec must be an object"))
    elif is_valid_kind(entity.get("kind")) and entity["kind"].lower() in KIND_SPEC_RULES:
        errors += _validate_spec(entity["kind"].lower(), spec)
    return errors


def _validate_envelope(entity: dict[str, Any]) -> list[FieldError]:
    errors = []
    if "apiVersion" not in entity:
        errors.append(FieldError("$.apiVersion", "apiVersion is required"))
    elif not is_valid_api_version(entity["apiVersion"]):
        errors.append(
            _invalid(
                "apiVersion",
                "a string that is a sequence of [a-z0-9A-Z]+ with an optional dns subdomain prefix and /",
                entity["apiVersion"],
            )
        )
    if "kind" not in entity:
        errors.append(FieldError("$.kind", "kind is required"))
    elif not is_valid_kind(entity["kind"]):
        errors.append(
            _invalid(
                "kind", "a string that is a sequence of [a-zA-Z][a-z0-9A-Z]*, at most 63 characters", entity["kind"]
            )
        )
    if "metadata" not in entity:
        errors.append(FieldError("$.metadata", "metadata is required"))
    elif not isinstance(entity["metadata"], dict):
        errors.append(FieldError("$.metadata", "metadata must be an object"))
    return errors


def _validate_metadata(metadata: dict[str, Any]) -> list[FieldError]:
    errors = []
    if "name" not in metadata:
        errors.append(FieldError("$.metadata.name", "metadata.name is required"))
    elif not is_valid_object_name(metadata["name"]):
        errors.append(
            _invalid(
                "metadata.name",
                "a string that is sequences of [a-zA-Z0-9] separated by any of [-_.], at most 63 characters in total",
                metadata["name"],
            )
        )
    namespace = metadata.get("namespace")
    if namespace is not None and not is_valid_dns_label(namespace):
        errors.append(
            _invalid(
                "metadata.namespace",
                "a string that is a sequence of [a-z0-9] separated by [-], at most 63 characters in total",
                namespace,
            )
        )
    for field in ("title", "description", "uid", "etag"):
        if field in metadata and not isinstance(metadata[field], str):
            errors.append(FieldError(f"$.metadata.{field}", f"metadata.{field} must be a string"))
    errors += _validate_string_map(metadata, "labels", is_valid_label_value)
    errors += _validate_string_map(metadata, "annotations", lambda v: isinstance(v, str))
    errors += _validate_tags(metadata.get("tags"))
    errors += _validate_links(metadata.get("links"))
    return errors


def _validate_string_map(metadata: dict[str, Any], field: str, value_ok) -> list[FieldError]:
    values = metadata.get(field)
    if values is None:
        return []
    if not isinstance(values, dict):
        return [FieldError(f"$.metadata.{field}", f"metadata.{field} must be an object of strings")]
    errors = []
    for key, value in values.items():
        if not is_valid_prefixed_key(key):
            errors.append(_invalid(f"metadata.{field}.{key}", "a valid key ([<dns subdomain>/]<name>)", key))
        if not value_ok(value):
            errors.append(_invalid(f"metadata.{field}.{key}", "a valid value", value))
    return errors


def _validate_tags(tags: Any) -> list[FieldError]:
    if tags is None:
        return []
    if not isinstance(tags, list):
        return [FieldError("$.metadata.tags", "metadata.tags must be a list of strings")]
    return [
        _invalid(
            f"metadata.tags[{i}]",
            "a string that is sequences of [a-z0-9:+#] separated by [-], at most 63 characters in total",
            tag,
        )
        for i, tag in enumerate(tags)
        if not is_valid_tag(tag)
    ]


def _validate_links(links: Any) -> list[FieldError]:
    if links is None:
        return []
    if not isinstance(links, list):
        return [FieldError("$.metadata.links", "metadata.links must be a list")]
    errors = []
    for i, link in enumerate(links):
        field = f"metadata.links[{i}]"
        if not isinstance(link, dict):
            errors.append(FieldError(f"$.{field}", "a link must be an object"))
            continue
        if not is_valid_url(link.get("url")):
            errors.append(_invalid(f"{field}.url", "a string that is a valid url", link.get("url")))
        title = link.get("title")
        if title is not None and (not isinstance(title, str) or not title.strip()):
            errors.append(_invalid(f"{field}.title", "a non empty string", title))
        icon = link.get("icon")
        if icon is not None and not is_valid_object_name(icon):
            errors.append(
                _invalid(
                    f"{field}.icon",
                    "a string that is sequences of [a-zA-Z0-9] separated by any "
                    "of [-_.], at most 63 characters in total",
                    icon,
                )
            )
    return errors


PLACEHOLDER_KEYS = {"$text", "$json", "$yaml"}
"""Placeholders (`definition: {$text: ./openapi.yaml}`) that ingestion replaces with the file's content."""


def is_placeholder(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in PLACEHOLDER_KEYS


def _is_required(kind: str, field: str, required: bool, spec: dict[str, Any]) -> bool:
    # Backstage's own examples ship an `mcp-server` API that describes `remotes` and has no `definition`.
    if kind == "api" and field == "definition" and spec.get("type") == "mcp-server":
        return False
    return required


def _validate_spec(kind: str, spec: dict[str, Any] | None) -> list[FieldError]:
    rules = KIND_SPEC_RULES[kind]
    spec = spec if spec is not None else {}
    errors = []
    for field, (expected_type, required) in rules.items():
        path = f"$.spec.{field}"
        if field not in spec:
            if _is_required(kind, field, required, spec):
                errors.append(FieldError(path, f"spec.{field} is required for kind {kind}"))
            continue
        value = spec[field]
        if is_placeholder(value):
            continue
        if not isinstance(value, expected_type):
            errors.append(FieldError(path, f"spec.{field} must be {_type_name(expected_type)}"))
        elif field in _STRING_LIST_FIELDS and not all(isinstance(v, str) and v for v in value):
            errors.append(FieldError(path, f"spec.{field} must be a list of non-empty strings"))
        elif expected_type is str and not value and required:
            errors.append(FieldError(path, f"spec.{field} must not be empty"))
    return errors


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {str: "a string", list: "a list", dict: "an object"}
    if isinstance(expected, tuple):
        return " or ".join(names[t] for t in expected)
    return names[expected]


def default_namespace(entity: dict[str, Any]) -> dict[str, Any]:
    """Backstage's `DefaultNamespaceEntityPolicy`: a missing namespace becomes `default`."""
    metadata = entity.get("metadata") or {}
    if metadata.get("namespace"):
        return entity
    return {**entity, "metadata": {**metadata, "namespace": DEFAULT_NAMESPACE}}
