"""How identity-sync's `identity.*` events become catalog `User` and `Group` entities: pure mapping, no I/O.

Users live at `account`, groups at their own scope. Memberships are kept on the group (`spec.members`),
nesting on the child (`spec.parent`); the catalog derives memberOf/hasMember and childOf/parentOf from them.
A deleted user or group is not removed: its entity stays, flagged orphan with the status `deleted`, so
every entity it owns keeps a resolvable owner until ownership is reassigned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.events import Event

IDENTITY_ID_ANNOTATION = "seed-idp.dev/identity-id"
IDENTITY_STATUS_ANNOTATION = "seed-idp.dev/identity-status"
"""`active`, `inactive` (deactivated) or `deleted`."""
USER_SCOPE = "account"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class MirrorTarget:
    """The catalog entity an identity event concerns."""

    scope: str
    kind: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.kind.lower()}:default/{self.name}"


@dataclass(frozen=True)
class MirrorWrite:
    """Write `document` at `target`; `orphan` flags an entity whose principal is gone."""

    target: MirrorTarget
    document: dict[str, Any]
    orphan: bool = False


def entity_name(text: str) -> str:
    """A Backstage entity name for a username or group name (`ada@example.com` → `ada_example.com`)."""
    name = _UNSAFE.sub("-", text.replace("@", "_"))[:63].strip("-_.")
    return name or "unnamed"


def targets_of(event: Event) -> list[MirrorTarget]:
    """The entities whose current documents `writes_for` needs (an empty list: not mirrored)."""
    kind, _, verb = event.type.removeprefix("identity.").partition(".")
    data = event.data
    if kind == "user" and verb in ("created", "updated", "deactivated", "reactivated", "deleted"):
        return [MirrorTarget(USER_SCOPE, "User", entity_name(name)) for name in _names(data, "username")]
    if kind == "group" and verb in ("created", "updated", "deleted"):
        return [MirrorTarget(event.scope, "Group", entity_name(name)) for name in _names(data, "name")]
    if kind == "group" and verb in ("member_added", "member_removed"):
        return [MirrorTarget(event.scope, "Group", entity_name(data["group_name"]))]
    return []


def _names(data: dict[str, Any], field: str) -> list[str]:
    """The current name, then the previous one when this event renamed the principal."""
    before = (data.get("changes") or {}).get(field, {}).get("before")
    return [data[field]] + ([before] if before and before != data[field] else [])


def writes_for(event: Event, current: dict[MirrorTarget, dict[str, Any] | None]) -> list[MirrorWrite]:
    """The catalog writes that mirror `event`, given the current documents of its targets."""
    kind, _, verb = event.type.removeprefix("identity.").partition(".")
    targets = targets_of(event)
    if not targets:
        return []
    data = event.data
    if verb in ("member_added", "member_removed"):
        document = current.get(targets[0])
        if document is None:  # the group entity is written by the group's own events first
            return []
        return [MirrorWrite(targets[0], _with_member(document, entity_name(data["username"]), verb == "member_added"))]
    deleted = verb == "deleted"
    status = "deleted" if deleted else "active" if data.get("active", True) else "inactive"
    build = _user_document if kind == "user" else _group_document
    writes = [MirrorWrite(targets[0], build(data, current.get(targets[0]), status), orphan=deleted)]
    for renamed_from in targets[1:]:  # the old name stays, orphaned, for whatever it still owns
        previous = current.get(renamed_from)
        if previous is not None:
            writes.append(MirrorWrite(renamed_from, _with_status(previous, "deleted"), orphan=True))
    return writes


def _metadata(name: str, data: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "name": name,
        "annotations": {IDENTITY_ID_ANNOTATION: data["id"], IDENTITY_STATUS_ANNOTATION: status},
    }


def _user_document(data: dict[str, Any], current: dict[str, Any] | None, status: str) -> dict[str, Any]:
    profile: dict[str, Any] = {}
    if data.get("display_name"):
        profile["displayName"] = data["display_name"]
    if data.get("emails"):
        profile["email"] = data["emails"][0]
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "User",
        "metadata": _metadata(entity_name(data["username"]), data, status),
        "spec": {"profile": profile, "memberOf": []},
    }


def _group_document(data: dict[str, Any], current: dict[str, Any] | None, status: str) -> dict[str, Any]:
    current_spec = (current or {}).get("spec") or {}
    spec: dict[str, Any] = {
        "type": current_spec.get("type", "team"),
        "profile": {"displayName": data["display_name"]} if data.get("display_name") else {},
        "children": [],
        # A deleted group keeps no members: they are no longer in it.
        "members": [] if status == "deleted" else list(current_spec.get("members") or []),
    }
    if data.get("parent_name") and status != "deleted":
        spec["parent"] = entity_name(data["parent_name"])
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Group",
        "metadata": _metadata(entity_name(data["name"]), data, status),
        "spec": spec,
    }


def _with_member(document: dict[str, Any], username: str, present: bool) -> dict[str, Any]:
    spec = dict(document.get("spec") or {})
    members = [m for m in spec.get("members") or [] if m != username]
    spec["members"] = sorted([*members, username]) if present else members
    return {**document, "spec": spec}


def _with_status(document: dict[str, Any], status: str) -> dict[str, Any]:
    metadata = dict(document.get("metadata") or {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}), IDENTITY_STATUS_ANNOTATION: status}
    return {**document, "metadata": metadata}
