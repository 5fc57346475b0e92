"""Scoped RBAC decided locally in every service (design.md §5).

Identity-sync owns roles, resource groups, role bindings and group nesting; every service keeps an
`AccessControl` replica of them (a snapshot at start-up, then changes from events) and asks it, in
microseconds, whether a principal may do something to a resource, or which resources of a type it may see
(as a `Visibility` that a store turns into a SQL condition, so lists are filtered in the database).

Rules:
- A principal's subjects are itself and every group it belongs to, directly or through nesting.
- A binding (subject + role + resource group, at a scope) grants the role's permissions on the resources its
  resource group selects. A resource group at scope S selects resources at S and, when it says so, at every
  scope below S or at chosen scopes below S; either every resource, or per resource type all of that type
  or the named ones.
- Access is the union of every grant of every subject. Bindings at a scope apply to the scopes below only
  through their resource group, so a project binding never reaches the org.
- Restricted resources (catalog entities tagged `hidden`, `private` or `secrets`) are visible only to their
  owners and to holders of `*` (IDP Admin); owners may edit their own resources when the service allows it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Literal

import msgspec

from shared.db import like_escape
from shared.errors import InputError
from shared.scopes import check_scope, contains

ALL_PERMISSIONS = "*"
_PERMISSION = re.compile(r"^[a-z]+(_[a-z]+)+$")

PrincipalKind = Literal["user", "group", "service_account"]

# Every permission of every service, by resource type (`<service>_<resource>`) → actions. Routes declare
# permissions from this table; a test checks that every declared route permission is listed here.
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "audit_event": ("view", "export"),
    "audit_settings": ("view", "edit"),
    "catalog_entity": ("view", "create", "edit", "delete", "refresh"),
    "catalog_location": ("view", "create", "delete"),
    "catalog_kind": ("view", "create", "edit", "delete"),
    "identity_user": ("view", "create", "edit", "delete"),
    "identity_group": ("view", "create", "edit", "delete"),
    "identity_service_account": ("view", "create", "edit", "delete"),
    "identity_api_key": ("view", "create", "delete"),
    "identity_token": ("create",),
    "identity_signing_key": ("view", "rotate"),
    "identity_scim": ("view", "edit"),
    "identity_import": ("create",),
    "identity_ldap": ("view", "sync"),
    "identity_sync_run": ("view",),
    "identity_orphan": ("view", "reassign"),
    "identity_role": ("view", "create", "edit", "delete"),
    "identity_resourcegroup": ("view", "create", "edit", "delete"),
    "identity_binding": ("view", "create", "delete"),
    "identity_policy": ("view", "create", "edit", "delete"),
    "proxy_endpoint": ("view", "edit", "use"),
    "proxy_agent": ("view", "edit"),
    "scorecard_scorecard": ("view", "create", "edit", "delete"),
    "scorecard_result": ("view",),
    "scorecard_alert": ("view", "edit"),
    "scorecard_data": ("create",),
    "scorecard_consumer": ("view",),
    "workflow_template": ("view", "create", "edit", "delete"),
    "workflow_execution": ("view", "create", "execute", "delete"),
}


OWNER_EDITABLE = frozenset({"catalog_entity_edit"})
"""Permissions an owner holds on its own resources without a role binding, when owners may edit (the IDP 1.0
rule). Services decide them per resource, where they know the owners."""


def all_permissions() -> list[str]:
    return [f"{resource_type}_{action}" for resource_type, actions in PERMISSIONS.items() for action in actions]


def resource_type_of(permission: str) -> str:
    """`catalog_entity_view` → `catalog_entity`."""
    return permission.rpartition("_")[0]


# --- the replicated state ------------------------------------------------------------------------------


class Role(msgspec.Struct, frozen=True):
    id: str
    scope: str
    name: str
    permissions: frozenset[str]
    builtin: bool = False


class ResourceSelector(msgspec.Struct, frozen=True):
    """Resources of one type: all of them (`ids` empty) or the named ones."""

    type: str
    ids: frozenset[str] = frozenset()


class ResourceGroup(msgspec.Struct, frozen=True):
    id: str
    scope: str
    name: str
    all_resources: bool = False
    selectors: tuple[ResourceSelector, ...] = ()
    include_child_scopes: bool = False
    """Every scope below `scope` too."""
    child_scopes: tuple[str, ...] = ()
    """Chosen scopes below `scope` (and what is below them)."""


class RoleBinding(msgspec.Struct, frozen=True):
    id: str
    scope: str
    subject: str
    """`user:<id>`, `group:<id>` or `service_account:<id>`."""
    role_id: str
    resource_group_id: str


class Resource(msgspec.Struct, frozen=True):
    """What a permission is checked against."""

    type: str
    scope: str
    id: str | None = None
    """None for creating a resource or acting on the type at a scope."""
    owners: frozenset[str] = frozenset()
    """Subjects owning it (catalog `spec.owner`), for restricted resources and owner edits."""
    restricted: bool = False


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    reason: str
    binding_id: str | None = None
    role_id: str | None = None
    resource_group_id: str | None = None
    subject: str | None = None


class Visibility(msgspec.Struct, frozen=True):
    """Which resources of one type a principal may see, shaped for a SQL condition.

    A resource is visible when `everything`, or its scope is in `scopes`, or under one of `subtrees`, or
    its (scope, id) is in `named`; restricted ones additionally need an owner among `subjects` unless
    `sees_restricted`.
    """

    everything: bool = False
    scopes: frozenset[str] = frozenset()
    subtrees: frozenset[str] = frozenset()
    named: frozenset[tuple[str, str]] = frozenset()
    subjects: frozenset[str] = frozenset()
    sees_restricted: bool = False

    @property
    def nothing(self) -> bool:
        return not (self.everything or self.scopes or self.subtrees or self.named)

    def covers(self, scope: str, resource_id: str | None = None) -> bool:
        """Whether a resource at `scope` is within reach (what `visibility_condition` selects, plus `named`),
        before the restricted-resource rule, which needs the resource's owners."""
        return (
            self.everything
            or scope in self.scopes
            or any(scope == tree or scope.startswith(tree + ".") for tree in self.subtrees)
            or (resource_id is not None and (scope, resource_id) in self.named)
        )


class Snapshot(msgspec.Struct):
    """Everything a replica needs, as identity-sync sends it at start-up."""

    roles: list[Role] = []
    resource_groups: list[ResourceGroup] = []
    bindings: list[RoleBinding] = []
    group_parents: dict[str, list[str]] = {}
    """group id → ids of the groups it is nested in."""
    memberships: dict[str, list[str]] = {}
    """`user:<id>` / `service_account:<id>` → ids of the groups it belongs to directly."""


# Built-in roles exist at the account scope everywhere; their ids are stable so bindings can name them.
BUILTIN_ROLES: tuple[Role, ...] = (
    Role("_idp_admin", "account", "IDP Admin", frozenset({ALL_PERMISSIONS}), builtin=True),
    Role("_viewer", "account", "Viewer", frozenset(p for p in all_permissions() if p.endswith("_view")), builtin=True),
    Role(
        "_catalog_editor",
        "account",
        "Catalog Editor",
        frozenset(p for p in all_permissions() if p.startswith("catalog_")),
        builtin=True,
    ),
    Role(
        "_workflow_executor",
        "account",
        "Workflow Executor",
        frozenset(
            {"workflow_template_view", "workflow_execution_view", "workflow_execution_create"}
            | {"workflow_execution_execute", "catalog_entity_view"}
        ),
        builtin=True,
    ),
)


class _Grant(msgspec.Struct, frozen=True):
    """One binding's reach for one permission, flattened for checks."""

    binding: RoleBinding
    group: ResourceGroup
    ids: frozenset[str] | None
    """None: every resource of the type; otherwise only these ids."""


def _selects_scope(group: ResourceGroup, scope: str) -> bool:
    if scope == group.scope:
        return True
    if group.include_child_scopes:
        return contains(group.scope, scope)
    return any(contains(child, scope) for child in group.child_scopes)


def _grant_covers(grant: _Grant, resource: Resource) -> bool:
    if grant.ids is None:
        return _selects_scope(grant.group, resource.scope)
    # Named resources are the group's own scope's: an id at another scope is another resource.
    return resource.scope == grant.group.scope and resource.id in grant.ids


def _ids_for(group: ResourceGroup, resource_type: str) -> frozenset[str] | Literal[False] | None:
    """None: all resources of the type; a set: only those; False: the group selects none of the type."""
    if group.all_resources:
        return None
    for selector in group.selectors:
        if selector.type == resource_type:
            return selector.ids or None
    return False


class AccessControl:
    """A replica of the access-control state, answering checks from per-principal compiled grants.

    Grants are compiled on a principal's first check and kept until the state changes; a change clears every
    compiled principal (changes are rare, checks are constant).
    """

    def __init__(self, owners_may_edit: bool = True) -> None:
        self.owners_may_edit = owners_may_edit
        self._roles: dict[str, Role] = {role.id: role for role in BUILTIN_ROLES}
        self._groups: dict[str, ResourceGroup] = {}
        self._bindings: dict[str, RoleBinding] = {}
        self._bindings_by_subject: dict[str, set[str]] = defaultdict(set)
        self._group_parents: dict[str, frozenset[str]] = {}
        self._memberships: dict[str, frozenset[str]] = {}
        self._compiled: dict[str, tuple[frozenset[str], dict[str, tuple[_Grant, ...]]]] = {}
        self.version = 0

    # -- replication --

    def load(self, snapshot: Snapshot) -> None:
        self._roles = {role.id: role for role in BUILTIN_ROLES} | {role.id: role for role in snapshot.roles}
        self._groups = {group.id: group for group in snapshot.resource_groups}
        self._bindings = {}
        self._bindings_by_subject = defaultdict(set)
        for binding in snapshot.bindings:
            self._add_binding(binding)
        self._group_parents = {group: frozenset(parents) for group, parents in snapshot.group_parents.items()}
        self._memberships = {subject: frozenset(groups) for subject, groups in snapshot.memberships.items()}
        self._changed()

    def put_role(self, role: Role) -> None:
        self._roles[role.id] = role
        self._changed()

    def remove_role(self, role_id: str) -> None:
        self._roles.pop(role_id, None)
        self._changed()

    def put_resource_group(self, group: ResourceGroup) -> None:
        self._groups[group.id] = group
        self._changed()

    def remove_resource_group(self, group_id: str) -> None:
        self._groups.pop(group_id, None)
        self._changed()

    def put_binding(self, binding: RoleBinding) -> None:
        self.remove_binding(binding.id)
        self._add_binding(binding)
        self._changed()

    def remove_binding(self, binding_id: str) -> None:
        old = self._bindings.pop(binding_id, None)
        if old is not None:
            self._bindings_by_subject[old.subject].discard(binding_id)
            self._changed()

    def set_group_parents(self, group_id: str, parent_ids: Iterable[str]) -> None:
        self._group_parents[group_id] = frozenset(parent_ids)
        self._changed()

    def set_memberships(self, subject: str, group_ids: Iterable[str]) -> None:
        self._memberships[subject] = frozenset(group_ids)
        self._changed()

    def add_membership(self, subject: str, group_id: str) -> None:
        self._memberships[subject] = self._memberships.get(subject, frozenset()) | {group_id}
        self._changed()

    def remove_membership(self, subject: str, group_id: str) -> None:
        self._memberships[subject] = self._memberships.get(subject, frozenset()) - {group_id}
        self._changed()

    def remove_subject(self, subject: str) -> None:
        """A deleted user, service account or group: its memberships, nesting and bindings go."""
        self._memberships.pop(subject, None)
        if subject.startswith("group:"):
            group_id = subject.partition(":")[2]
            self._group_parents.pop(group_id, None)
        for binding_id in list(self._bindings_by_subject.pop(subject, ())):
            self._bindings.pop(binding_id, None)
        self._changed()

    def _add_binding(self, binding: RoleBinding) -> None:
        self._bindings[binding.id] = binding
        self._bindings_by_subject[binding.subject].add(binding.id)

    def _changed(self) -> None:
        self._compiled.clear()
        self.version += 1

    # -- reading the state --

    def role(self, role_id: str) -> Role | None:
        return self._roles.get(role_id)

    def resource_group(self, group_id: str) -> ResourceGroup | None:
        return self._groups.get(group_id)

    def bindings(self) -> list[RoleBinding]:
        return list(self._bindings.values())

    def subjects_of(self, subject: str) -> frozenset[str]:
        """`subject` and every group it belongs to, through nesting (cycles tolerated)."""
        return self._compile(subject)[0]

    # -- decisions --

    def check(self, subject: str, permission: str, resource: Resource) -> Decision:
        subjects, grants = self._compile(subject)
        if resource.restricted and not (subjects & resource.owners) and not self._is_admin_for(grants, resource):
            return Decision(False, "the resource is restricted to its owners")
        for grant in grants.get(permission, ()):
            if _grant_covers(grant, resource):
                return Decision(
                    True,
                    f"role binding {grant.binding.id} grants {permission}",
                    grant.binding.id,
                    grant.binding.role_id,
                    grant.group.id,
                    grant.binding.subject,
                )
        if (
            self.owners_may_edit
            and permission in OWNER_EDITABLE
            and resource.id is not None
            and subjects & resource.owners
        ):
            return Decision(True, "owners may edit their own resources")
        return Decision(False, f"no role binding grants {permission} on this resource")

    def holds(self, subject: str, permission: str) -> bool:
        """Some grant includes `permission`, at some scope. (The owner rule is decided per resource by
        `check`, where a service knows the resource's owners.)"""
        return bool(self._compile(subject)[1].get(permission))

    def may(self, subject: str, permission: str, resource: Resource) -> bool:
        return self.check(subject, permission, resource).allowed

    def visibility(self, subject: str, permission: str) -> Visibility:
        """Which resources of `permission`'s type `subject` holds `permission` on, for list filters."""
        subjects, grants = self._compile(subject)
        everything = False
        scopes: set[str] = set()
        subtrees: set[str] = set()
        named: set[tuple[str, str]] = set()
        for grant in grants.get(permission, ()):
            group = grant.group
            if grant.ids is not None:
                # Named resources live at the group's own scope (checked when the group is written).
                named.update((group.scope, resource_id) for resource_id in grant.ids)
            elif group.include_child_scopes:
                if group.scope == "account":
                    everything = True
                subtrees.add(group.scope)
            else:
                scopes.add(group.scope)
                subtrees.update(group.child_scopes)
        sees_restricted = any(ALL_PERMISSIONS in self._roles[g.binding.role_id].permissions for g in _all(grants))
        return Visibility(
            everything, frozenset(scopes), frozenset(subtrees), frozenset(named), subjects, sees_restricted
        )

    def _is_admin_for(self, grants: dict[str, tuple[_Grant, ...]], resource: Resource) -> bool:
        return any(
            ALL_PERMISSIONS in self._roles[grant.binding.role_id].permissions
            and _selects_scope(grant.group, resource.scope)
            for grant in _all(grants)
        )

    def _compile(self, subject: str) -> tuple[frozenset[str], dict[str, tuple[_Grant, ...]]]:
        compiled = self._compiled.get(subject)
        if compiled is None:
            compiled = self._compiled[subject] = self._compile_uncached(subject)
        return compiled

    def _compile_uncached(self, subject: str) -> tuple[frozenset[str], dict[str, tuple[_Grant, ...]]]:
        subjects = {subject}
        pending = list(self._memberships.get(subject, ()))
        if subject.startswith("group:"):
            pending.extend(self._group_parents.get(subject.partition(":")[2], ()))
        while pending:
            group_id = pending.pop()
            key = f"group:{group_id}"
            if key not in subjects:
                subjects.add(key)
                pending.extend(self._group_parents.get(group_id, ()))
        grants: dict[str, list[_Grant]] = defaultdict(list)
        for each in subjects:
            for binding_id in self._bindings_by_subject.get(each, ()):
                binding = self._bindings[binding_id]
                role = self._roles.get(binding.role_id)
                group = self._groups.get(binding.resource_group_id)
                if role is None or group is None:
                    continue  # dangling until the replica catches up: grants nothing
                permissions = all_permissions() if ALL_PERMISSIONS in role.permissions else role.permissions
                for permission in permissions:
                    ids = _ids_for(group, resource_type_of(permission))
                    if ids is not False:
                        grants[permission].append(_Grant(binding, group, ids))
        return frozenset(subjects), {permission: tuple(each) for permission, each in grants.items()}


def _all(grants: dict[str, tuple[_Grant, ...]]) -> Iterable[_Grant]:
    for each in grants.values():
        yield from each


EVERYTHING = Visibility(everything=True, sees_restricted=True)


INDEXED_SUBTREES = 32
"""Up to this many subtrees, a visibility condition tests each prefix on its own so that an index on the scope
column serves it; beyond, one `LIKE ANY` over every row is cheaper than planning that many range scans."""


def visibility_condition(
    visibility: Visibility, scope_column: str, arg: Callable[[Any], str], id_column: str | None = None
) -> str:
    """A SQL condition selecting what `visibility` reaches: the scopes on `scope_column` and, given the
    resources' `id_column` (text), the named resources. `arg(value)` binds a parameter and returns its
    placeholder. (The restricted-resource rule needs owners, which only the owning service knows.)"""
    if visibility.everything:
        return "TRUE"
    clauses = []
    if visibility.scopes or visibility.subtrees:
        clauses.append(f"{scope_column} = ANY({arg(sorted(visibility.scopes | visibility.subtrees))}::text[])")
    if len(visibility.subtrees) <= INDEXED_SUBTREES:
        # One prefix test per subtree, which PostgreSQL turns into a range scan of a scope index. The prefix is a
        # literal (a checked scope holds only letters, digits, `_` and dots): as a parameter, a cached generic plan
        # could not use the index.
        clauses += [f"starts_with({scope_column}, '{check_scope(scope)}.')" for scope in sorted(visibility.subtrees)]
    else:
        below = sorted(like_escape(scope) + ".%" for scope in visibility.subtrees)
        clauses.append(f"{scope_column} LIKE ANY({arg(below)}::text[])")
    if id_column is not None:
        # Per scope, the named ids: an index on (scope, id) serves each, and the whole OR stays a union of scans.
        named: dict[str, list[str]] = defaultdict(list)
        for scope, resource_id in visibility.named:
            named[scope].append(resource_id)
        clauses += [
            f"({scope_column} = '{check_scope(scope)}' AND {id_column} = ANY({arg(sorted(ids))}::text[]))"
            for scope, ids in sorted(named.items())
        ]
    return "(" + " OR ".join(clauses) + ")" if clauses else "FALSE"


# --- validation of writes (identity-sync calls these before storing) -----------------------------------


def validate_permissions(permissions: Iterable[str], field: str = "permissions") -> frozenset[str]:
    known = set(all_permissions()) | {ALL_PERMISSIONS}
    result = frozenset(permissions)
    for index, permission in enumerate(sorted(result)):
        if not isinstance(permission, str) or (not _PERMISSION.match(permission) and permission != ALL_PERMISSIONS):
            raise InputError.for_field(f"{field}[{index}]", f"{permission!r} is not a permission name")
        if permission not in known:
            raise InputError.for_field(f"{field}[{index}]", f"unknown permission {permission!r}")
    return result


def validate_resource_group(group: ResourceGroup) -> ResourceGroup:
    """A group may only reach its own scope and scopes below it, and only known resource types."""
    check_scope(group.scope, "scope")
    for index, child in enumerate(group.child_scopes):
        check_scope(child, f"child_scopes[{index}]")
        if child == group.scope or not contains(group.scope, child):
            raise InputError.for_field(f"child_scopes[{index}]", f"{child} is not below {group.scope}")
    for index, selector in enumerate(group.selectors):
        if selector.type not in PERMISSIONS:
            raise InputError.for_field(f"selectors[{index}].type", f"unknown resource type {selector.type!r}")
    if not group.all_resources and not group.selectors:
        raise InputError.for_field("selectors", "select all resources or at least one resource type")
    return group


def validate_binding(binding: RoleBinding, role: Role | None, group: ResourceGroup | None) -> RoleBinding:
    """A binding, its role and its resource group must sit at one scope chain: role and group at the binding's
    scope or above it (built-in roles at `account`), and the group's reach starts at the binding's scope, so a
    binding made at a project can never grant anything at its org."""
    check_scope(binding.scope, "scope")
    if role is None:
        raise InputError.for_field("role_id", f"no role {binding.role_id}")
    if group is None:
        raise InputError.for_field("resource_group_id", f"no resource group {binding.resource_group_id}")
    if not contains(role.scope, binding.scope):
        raise InputError.for_field("role_id", f"role {role.id} is defined at {role.scope}, not above {binding.scope}")
    if group.scope != binding.scope:
        raise InputError.for_field(
            "resource_group_id", f"resource group {group.id} is at {group.scope}, the binding at {binding.scope}"
        )
    return binding
