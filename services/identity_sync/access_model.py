"""Access-control objects as the API takes and shows them, and their conversion to the replicated structs.

The replicated structs (shared/authz.py, shared/policy.py) are what every service decodes; the inputs here
add the API's constraints and leave the id to the server.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec

from shared.authz import (
    BUILTIN_ROLES,
    ResourceGroup,
    ResourceSelector,
    Role,
    RoleBinding,
    check_scope,
    validate_permissions,
    validate_resource_group,
)
from shared.errors import InputError
from shared.policy import Policy, PolicySet

Kind = Literal["role", "resource_group", "role_binding", "policy", "policy_set"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Description = Annotated[str, msgspec.Meta(max_length=1024)]
_SUBJECT_KINDS = ("user", "group", "service_account")


class RoleInput(msgspec.Struct, forbid_unknown_fields=True):
    scope: str
    name: Name
    permissions: list[str]
    description: Description = ""


class SelectorInput(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    ids: list[Annotated[str, msgspec.Meta(min_length=1, max_length=512)]] = []


class ResourceGroupInput(msgspec.Struct, forbid_unknown_fields=True):
    scope: str
    name: Name
    all_resources: bool = False
    selectors: list[SelectorInput] = []
    include_child_scopes: bool = False
    child_scopes: list[str] = []
    description: Description = ""


class RoleBindingInput(msgspec.Struct, forbid_unknown_fields=True):
    scope: str
    subject: str
    """`user:<id>`, `group:<id>` or `service_account:<id>`."""
    role_id: str
    resource_group_id: str


class PolicyInput(msgspec.Struct, forbid_unknown_fields=True):
    scope: str
    name: Name
    source: Annotated[str, msgspec.Meta(min_length=1)]
    description: Description = ""


class PolicySetInput(msgspec.Struct, forbid_unknown_fields=True):
    scope: str
    name: Name
    actions: list[str]
    policy_ids: list[str]
    mode: Literal["deny", "warn"] = "deny"
    enabled: bool = True
    description: Description = ""


Input = RoleInput | ResourceGroupInput | RoleBindingInput | PolicyInput | PolicySetInput
Document = Role | ResourceGroup | RoleBinding | Policy | PolicySet

INPUT_TYPES: dict[Kind, type] = {
    "role": RoleInput,
    "resource_group": ResourceGroupInput,
    "role_binding": RoleBindingInput,
    "policy": PolicyInput,
    "policy_set": PolicySetInput,
}
DOCUMENT_TYPES: dict[Kind, type] = {
    "role": Role,
    "resource_group": ResourceGroup,
    "role_binding": RoleBinding,
    "policy": Policy,
    "policy_set": PolicySet,
}
PERMISSION_RESOURCE: dict[Kind, str] = {
    "role": "identity_role",
    "resource_group": "identity_resourcegroup",
    "role_binding": "identity_binding",
    "policy": "identity_policy",
    "policy_set": "identity_policy",
}


class AccessObject(msgspec.Struct, kw_only=True):
    """One stored object as the API shows it."""

    kind: str
    id: str
    scope: str
    name: str
    description: str = ""
    version: int
    builtin: bool = False
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    document: dict[str, Any]


class AccessPage(msgspec.Struct):
    items: list[AccessObject]
    nextCursor: str | None = None


class ListQuery(msgspec.Struct, forbid_unknown_fields=True):
    scope: str | None = None
    """Only objects at this scope (and, with `include_parents`, above it)."""
    include_parents: bool = False
    subject: str | None = None
    """Role bindings: only this subject's."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100
    cursor: str | None = None


class PermissionView(msgspec.Struct):
    name: str
    resource_type: str
    action: str


class ExplainQuery(msgspec.Struct, forbid_unknown_fields=True):
    principal: str
    permission: str
    scope: str = "account"
    resource: str | None = None
    """The resource's id at `scope`; absent for creating or acting on the type."""


class PolicyEvaluation(msgspec.Struct, forbid_unknown_fields=True):
    """A dry run: a policy's source (or a stored policy's id) against a sample input."""

    input: Any
    source: str | None = None
    policy_id: str | None = None


class PolicyEvaluationResult(msgspec.Struct):
    deny: list[str]
    warn: list[str]


def check_subject(subject: str, field: str = "subject") -> str:
    kind, _, identifier = subject.partition(":")
    if kind not in _SUBJECT_KINDS or not identifier:
        raise InputError.for_field(field, "a subject is `user:<id>`, `group:<id>` or `service_account:<id>`")
    return subject


def name_of(kind: Kind, body: Input) -> str:
    if isinstance(body, RoleBindingInput):
        # A binding's identity is what it ties together: the same binding twice is a conflict.
        return f"{body.subject} {body.role_id} {body.resource_group_id}"
    return body.name


def document_from(kind: Kind, object_id: str, body: Input) -> Document:
    """The replicated struct for a validated input (references are checked by the service, which can see them)."""
    check_scope(body.scope)
    match body:
        case RoleInput():
            return Role(object_id, body.scope, body.name, validate_permissions(body.permissions))
        case ResourceGroupInput():
            selectors = tuple(ResourceSelector(s.type, frozenset(s.ids)) for s in body.selectors)
            return validate_resource_group(
                ResourceGroup(
                    object_id,
                    body.scope,
                    body.name,
                    body.all_resources,
                    selectors,
                    body.include_child_scopes,
                    tuple(body.child_scopes),
                )
            )
        case RoleBindingInput():
            return RoleBinding(object_id, body.scope, check_subject(body.subject), body.role_id, body.resource_group_id)
        case PolicyInput():
            return Policy(object_id, body.scope, body.name, body.source)
        case PolicySetInput():
            return PolicySet(
                object_id, body.scope, body.name, tuple(body.actions), tuple(body.policy_ids), body.mode, body.enabled
            )
    raise AssertionError(kind)


def builtin_role_objects() -> list[AccessObject]:
    return [
        AccessObject(
            kind="role",
            id=role.id,
            scope=role.scope,
            name=role.name,
            version=0,
            builtin=True,
            document=msgspec.to_builtins(role),
        )
        for role in BUILTIN_ROLES
    ]
