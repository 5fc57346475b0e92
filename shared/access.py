"""Every service's replica of the access-control state: a snapshot from identity-sync, then its events.

The replica subscribes to `idp.evt.identity.>` (plain NATS, so it hears every event the moment the relay
publishes it), asks identity-sync for a snapshot over `idp.rpc.identity_sync.access_snapshot`, and applies the
events that are newer than the snapshot. Every write carries the state's version, so the order in which the
snapshot and the events arrive does not matter. After a reconnect it asks for a new snapshot, as events may
have been missed while disconnected. Until a snapshot is loaded only admins pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import msgspec
from nats.aio.client import Client as NatsClient

from shared.authz import (
    EVERYTHING,
    OWNER_EDITABLE,
    AccessControl,
    Decision,
    Resource,
    ResourceGroup,
    Role,
    RoleBinding,
    Snapshot,
    Visibility,
    resource_type_of,
)
from shared.bus import request_rpc
from shared.db import transaction
from shared.errors import NotAllowedError, ProblemError
from shared.events import DEFAULT_SCOPE, ResourceRef, decode_event, new_event
from shared.outbox import write_event
from shared.policy import (
    WARNING_HEADER,
    Policy,
    PolicyDeniedError,
    PolicyEngine,
    PolicyOutcome,
    PolicySet,
    outcome_data,
)
from shared.scopes import contains

log = logging.getLogger(__name__)

IDENTITY_SERVICE = "identity_sync"
SNAPSHOT_METHOD = "access_snapshot"
EVENTS_SUBJECT = "idp.evt.identity.>"
VERSION_FIELD = "access_version"
"""The event data field carrying the access-control state version its transaction wrote."""
MAX_RETRY_SECONDS = 5.0


OBJECT_TYPES: dict[str, type] = {
    "role": Role,
    "resource_group": ResourceGroup,
    "role_binding": RoleBinding,
    "policy": Policy,
    "policy_set": PolicySet,
}
ACCESS_EVENTS = frozenset(
    [f"identity.{kind}.{verb}" for kind in OBJECT_TYPES for verb in ("created", "updated", "deleted")]
    + [f"identity.group.{verb}" for verb in ("created", "updated", "deleted", "member_added", "member_removed")]
    + ["identity.user.deleted", "identity.service_account.deleted"]
)
"""Identity events that change what anyone may do."""


class AccessSnapshot(msgspec.Struct):
    version: int
    roles: list[Role] = []
    resource_groups: list[ResourceGroup] = []
    role_bindings: list[RoleBinding] = []
    policies: list[Policy] = []
    policy_sets: list[PolicySet] = []
    group_parents: dict[str, list[str]] = {}
    memberships: dict[str, list[str]] = {}


class SnapshotRequest(msgspec.Struct):
    pass


class Caller(Protocol):
    kind: str
    id: str
    is_admin: bool
    permissions: frozenset[str]
    """Permissions written into the credential itself (an API key's), held at `scope` and below."""
    scope: str


def subject_of(caller: Caller) -> str:
    return f"{caller.kind}:{caller.id}"


class AccessReplica:
    def __init__(self, *, owners_may_edit: bool = True) -> None:
        self.control = AccessControl(owners_may_edit)
        self.policies = PolicyEngine()
        self.version: int | None = None
        """The state version applied; None until the first snapshot."""
        self._pending: list[tuple[int, str, str, dict[str, Any]]] = []
        self._advanced = asyncio.Event()

    @property
    def loaded(self) -> bool:
        return self.version is not None

    # -- decisions --

    def check(self, caller: Caller, permission: str, resource: Resource) -> Decision:
        if caller.is_admin:
            return Decision(True, "the caller is an administrator")
        if permission in caller.permissions and contains(caller.scope, resource.scope):
            return Decision(True, f"the credential carries the permission at {caller.scope}")
        return self.control.check(subject_of(caller), permission, resource)

    def require(self, caller: Caller, permission: str, resource: Resource) -> None:
        if not self.check(caller, permission, resource).allowed:
            raise NotAllowedError(f"missing permission {permission} at {resource.scope}")

    def require_at(self, caller: Caller, permission: str, scope: str, resource_id: str | None = None) -> None:
        """`require` on the resource of `permission`'s type at `scope`, named `resource_id` (None: the type)."""
        self.require(caller, permission, Resource(resource_type_of(permission), scope, resource_id))

    def visibility(self, caller: Caller, permission: str) -> Visibility:
        """What the caller may see of `permission`'s resource type; everything for admins."""
        if caller.is_admin:
            return EVERYTHING
        granted = self.control.visibility(subject_of(caller), permission)
        if permission not in caller.permissions:
            return granted
        if caller.scope == DEFAULT_SCOPE:
            return EVERYTHING
        return msgspec.structs.replace(granted, subtrees=granted.subtrees | {caller.scope})

    def holds_anywhere(self, caller: Caller, permission: str) -> bool:
        """Whether some grant of the caller's includes `permission`: the route-level check before a handler
        decides on the resource itself and lists filter by `visibility`. An owner edit needs no grant of the
        edit permission, so when owners may edit, whoever may view that type of resource passes to the
        handler, which decides on the resource's owners."""
        if caller.is_admin or permission in caller.permissions:
            return True
        subject = subject_of(caller)
        if self.control.holds(subject, permission):
            return True
        return (
            self.control.owners_may_edit
            and permission in OWNER_EDITABLE
            and self.control.holds(subject, permission.removesuffix("_edit") + "_view")
        )

    def authorize_write(self, caller: Caller, permission: str, resource: Resource, document: Any) -> PolicyOutcome:
        """A write's two gates: the caller holds `permission` on the resource (at its scope), and the policy sets
        on `permission` there pass. Raises NotAllowedError / PolicyDeniedError; returns the outcome (warnings)."""
        self.require(caller, permission, resource)
        return self.enforce_policies(
            permission, resource.scope, {"resource": document, "principal": {"kind": caller.kind, "id": caller.id}}
        )

    def enforce_policies(self, action: str, scope: str, document: Any) -> PolicyOutcome:
        """Evaluate the policy sets attached to `action` at `scope`; raises PolicyDeniedError when a `deny` set
        is violated, otherwise returns the outcome (warnings to return and record)."""
        outcome = self.policies.evaluate(action, scope, document)
        if outcome.denied:
            raise PolicyDeniedError(outcome)
        return outcome

    async def caught_up(self, version: int, timeout: float = 2.0) -> bool:
        """Wait until the replica holds `version` (read-your-writes after a change); False at the timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self.version is None or self.version < version:
                    self._advanced.clear()
                    await self._advanced.wait()
        except TimeoutError:
            return False
        return True

    # -- replication --

    def load(self, snapshot: AccessSnapshot) -> None:
        self.control.load(
            Snapshot(
                snapshot.roles,
                snapshot.resource_groups,
                snapshot.role_bindings,
                snapshot.group_parents,
                snapshot.memberships,
            )
        )
        self.policies.load(snapshot.policies, snapshot.policy_sets)
        self.version = snapshot.version
        pending, self._pending = self._pending, []
        for version, event_type, resource_id, data in sorted(pending, key=lambda pending: pending[0]):
            self._apply(version, event_type, resource_id, data)
        self._advanced.set()

    def apply_event(self, event_type: str, resource_id: str, data: dict[str, Any]) -> None:
        """Apply one identity event that changes access (others are ignored). Each carries `access_version`,
        the state version its transaction wrote, which orders it against the snapshot and other events."""
        version = data.get(VERSION_FIELD)
        if event_type not in ACCESS_EVENTS or not isinstance(version, int):
            return
        if self.version is None:
            self._pending.append((version, event_type, resource_id, data))
        else:
            self._apply(version, event_type, resource_id, data)

    def _apply(self, version: int, event_type: str, resource_id: str, data: dict[str, Any]) -> None:
        if version <= self.version:
            return  # the snapshot (or an earlier event) already holds it
        _, kind, verb = event_type.split(".", 2)
        if kind in OBJECT_TYPES:
            if verb == "deleted":
                self._remove_object(kind, resource_id)
            else:
                self._put_object(msgspec.convert(data[kind], OBJECT_TYPES[kind]))
        else:
            self._apply_principal_change(kind, verb, resource_id, data)
        self.version = version
        self._advanced.set()

    def _put_object(self, document: Any) -> None:
        match document:
            case Role():
                self.control.put_role(document)
            case ResourceGroup():
                self.control.put_resource_group(document)
            case RoleBinding():
                self.control.put_binding(document)
            case Policy():
                self.policies.put_policy(document)
            case PolicySet():
                self.policies.put_policy_set(document)

    def _remove_object(self, kind: str, object_id: str) -> None:
        match kind:
            case "role":
                self.control.remove_role(object_id)
            case "resource_group":
                self.control.remove_resource_group(object_id)
            case "role_binding":
                self.control.remove_binding(object_id)
            case "policy":
                self.policies.remove_policy(object_id)
            case "policy_set":
                self.policies.remove_policy_set(object_id)

    def _apply_principal_change(self, kind: str, verb: str, principal_id: str, data: dict[str, Any]) -> None:
        """Identity-sync's users, groups and service accounts: nesting, membership, deletion."""
        match kind, verb:
            case "group", "created" | "updated":
                parent = data.get("parent")
                self.control.set_group_parents(principal_id, [parent] if parent else [])
            case "group", "member_added":
                self.control.add_membership(f"user:{data['user_id']}", principal_id)
            case "group", "member_removed":
                self.control.remove_membership(f"user:{data['user_id']}", principal_id)
            case _, "deleted":
                self.control.remove_subject(f"{kind}:{principal_id}")

    async def run(self, nc: NatsClient, retry_seconds: float = 1.0) -> None:
        """Keep the replica current until cancelled."""

        async def on_event(msg: Any) -> None:
            try:
                event = decode_event(msg.data)
                self.apply_event(event.type, event.resource.id, event.data)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError, KeyError) as exc:
                log.warning("ignored an unreadable access-control event: %s", exc)

        subscription = await nc.subscribe(EVENTS_SUBJECT, cb=on_event)
        try:
            while True:
                await self._load_snapshot(nc, retry_seconds)
                await _reconnected(nc)
                self.version = None  # events may have been missed: buffer until the next snapshot
        finally:
            await subscription.unsubscribe()

    async def _load_snapshot(self, nc: NatsClient, retry_seconds: float) -> None:
        delay = retry_seconds
        while True:
            try:
                snapshot = await request_rpc(nc, IDENTITY_SERVICE, SNAPSHOT_METHOD, SnapshotRequest(), AccessSnapshot)
            except ProblemError as exc:
                log.debug("access-control snapshot not available yet: %s", exc.detail)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            self.load(snapshot)
            return


async def _reconnected(nc: NatsClient) -> None:
    """Returns after the client's next reconnect (nats-py counts them; its callback is fixed at connect)."""
    seen = nc.stats["reconnects"]
    while nc.stats["reconnects"] == seen:  # noqa: ASYNC110 - no event to wait on; a counter read is free
        await asyncio.sleep(0.5)


async def record_policy_outcome(
    pool: Any, service: str, actor: Any, action: str, scope: str, resource: ResourceRef, outcome: PolicyOutcome
) -> None:
    """`<service>.policy.evaluated` through the outbox when any policy set applied (warnings are recorded
    here; denials reach the trail as `<service>.access.denied`)."""
    if not outcome.applied:
        return
    event = new_event(
        f"{service}.policy.evaluated",
        source=service,
        actor=actor,
        scope=scope,
        resource=resource,
        data=outcome_data(action, outcome),
    )
    async with transaction(pool) as conn:
        await write_event(conn, event)


def warning_headers(outcome: PolicyOutcome) -> list[tuple[str, str]]:
    """One `X-Policy-Warning` per distinct warning; header-safe (one line, ASCII)."""
    messages = dict.fromkeys(" ".join(w.message.split()) for w in outcome.warnings)  # once each, in order
    return [(WARNING_HEADER, message.encode("ascii", "replace").decode()[:500]) for message in messages]
