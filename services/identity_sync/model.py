"""Users, groups and service accounts: request and response shapes, and the pure rules about them."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

import msgspec

from shared.errors import ConflictError, InputError
from shared.scopes import contains

# A username is any printable text without spaces (SCIM clients send e-mail addresses); group and
# service-account names follow Backstage's entity names so the catalog can mirror them unchanged.
Username = Annotated[str, msgspec.Meta(pattern=r"^[^\s\x00-\x1f\x7f]{1,256}$")]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
DisplayName = Annotated[str, msgspec.Meta(max_length=256)]
Email = Annotated[str, msgspec.Meta(pattern=r"^[^\s@\x00-\x1f]{1,128}@[^\s@\x00-\x1f]{1,255}$")]
ExternalId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Id = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F-]{32,36}$")]


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class UserCreate(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    username: Username
    display_name: DisplayName = ""
    emails: list[Email] = []
    active: bool = True
    external_id: ExternalId | None = None


class UserPatch(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Merge patch: absent fields stay as they are."""

    username: Username | msgspec.UnsetType = msgspec.UNSET
    display_name: DisplayName | msgspec.UnsetType = msgspec.UNSET
    emails: list[Email] | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET
    external_id: ExternalId | msgspec.UnsetType | None = msgspec.UNSET


class GroupCreate(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    display_name: DisplayName = ""
    scope: str = "account"
    parent: Id | None = None
    """Id of the parent group (same scope or a scope above)."""
    external_id: ExternalId | None = None


class GroupPatch(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    display_name: DisplayName | msgspec.UnsetType = msgspec.UNSET
    parent: Id | msgspec.UnsetType | None = msgspec.UNSET
    external_id: ExternalId | msgspec.UnsetType | None = msgspec.UNSET


class ServiceAccountCreate(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    display_name: DisplayName = ""
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    scope: str = "account"


class ServiceAccountPatch(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    display_name: DisplayName | msgspec.UnsetType = msgspec.UNSET
    description: Annotated[str, msgspec.Meta(max_length=2000)] | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    username: str
    display_name: str
    emails: list[str]
    active: bool
    external_id: str | None
    source: str
    groups: list[str]
    """Ids of the groups the user is a direct member of."""
    attributes: dict[str, Any] = {}
    """Profile attributes a SCIM client provisioned beyond these fields (name, title, phoneNumbers …)."""
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deactivated_at: dt.datetime | None
    last_seen: dt.datetime | None


class Group(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    display_name: str
    scope: str
    parent: str | None
    """Id of the parent group."""
    external_id: str | None
    source: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class ServiceAccount(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    display_name: str
    description: str
    scope: str
    active: bool
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    last_seen: dt.datetime | None


class UserQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    q: str | None = None
    """Substring of the username, display name or an e-mail address (case-insensitive)."""
    username: str | None = None
    email: str | None = None
    active: bool | None = None
    group: Id | None = None
    """Direct members of this group."""
    source: str | None = None
    inactive_since: dt.datetime | None = None
    """Users not seen since this time (never seen counts from creation)."""
    limit: Limit = 100
    cursor: str | None = None


class GroupQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    q: str | None = None
    name: str | None = None
    scope: str | None = None
    include_subscopes: bool = True
    parent: Id | None = None
    limit: Limit = 100
    cursor: str | None = None


class ServiceAccountQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    q: str | None = None
    scope: str | None = None
    include_subscopes: bool = True
    active: bool | None = None
    limit: Limit = 100
    cursor: str | None = None


class MemberQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    limit: Limit = 100
    cursor: str | None = None


class UserPage(msgspec.Struct, frozen=True):
    items: list[User]
    totalItems: int
    nextCursor: str | None = None


class GroupPage(msgspec.Struct, frozen=True):
    items: list[Group]
    totalItems: int
    nextCursor: str | None = None


class ServiceAccountPage(msgspec.Struct, frozen=True):
    items: list[ServiceAccount]
    totalItems: int
    nextCursor: str | None = None


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def name_for(text: str) -> str:
    """A group name from a directory's or SCIM client's display name (`Platform Team` → `platform-team`)."""
    return _NAME_UNSAFE.sub("-", text.strip().lower()).strip("-._")[:63] or "group"


class CycleError(ConflictError):
    """A group would become its own ancestor."""


def check_no_cycle(group_id: str, new_parent: str | None, parents: dict[str, str | None]) -> None:
    """Refuse a parent that is the group itself or one of its descendants.

    `parents` maps each ancestor of `new_parent` (as far as known) to its parent.
    """
    seen = set()
    current = new_parent
    while current is not None:
        if current == group_id:
            raise CycleError("the parent would make the group its own ancestor (a cycle)")
        if current in seen:
            break
        seen.add(current)
        current = parents.get(current)


def check_parent_scope(group_scope: str, parent_scope: str) -> None:
    """A group nests under a group at its own scope or one above (a scope contains those it prefixes)."""
    if not contains(parent_scope, group_scope):
        raise InputError.for_field("$.parent", f"a group at {group_scope} cannot nest under a group at {parent_scope}")


def changed_fields(before: msgspec.Struct, after: msgspec.Struct, fields: tuple[str, ...]) -> dict[str, Any]:
    """{field: {before, after}} for the listed fields that differ."""
    changes = {}
    for name in fields:
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            changes[name] = {"before": _plain(old), "after": _plain(new)}
    return changes


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def user_state(user: User) -> dict[str, Any]:
    """A user as events carry it: everything but `last_seen`, which changes without an event."""
    return {k: _plain(v) for k, v in msgspec.structs.asdict(user).items() if k != "last_seen"}


def group_state(group: Group, parent_name: str | None) -> dict[str, Any]:
    state = {k: _plain(v) for k, v in msgspec.structs.asdict(group).items()}
    state["parent_name"] = parent_name
    return state


def service_account_state(account: ServiceAccount) -> dict[str, Any]:
    return {k: _plain(v) for k, v in msgspec.structs.asdict(account).items() if k != "last_seen"}


# --- tokens ------------------------------------------------------------------------------------------

Permission = Annotated[str, msgspec.Meta(pattern=r"^identity_[a-z_]{1,64}$")]


class ApiKeyCreate(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 90
    scope: str | None = None
    """Scope the key is limited to: the service account's scope (default) or one below it."""
    permissions: list[Permission] = []
    """Identity permissions the key grants (until access control assigns roles, the only ones it holds)."""


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    service_account_id: str
    name: str
    scope: str
    permissions: list[str]
    expires_at: dt.datetime
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class ApiKeyCreated(ApiKey, frozen=True, kw_only=True):
    key: str
    """The key itself: shown in this response only; identity-sync keeps a hash."""


class ApiKeyList(msgspec.Struct, frozen=True):
    items: list[ApiKey]


class TokenRequest(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    api_key: Annotated[str, msgspec.Meta(max_length=512)]


class AccessToken(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int
    token_type: str = "Bearer"


class SigningKeyView(msgspec.Struct, frozen=True):
    kid: str
    created_at: dt.datetime
    retired_at: dt.datetime | None


class SigningKeyList(msgspec.Struct, frozen=True):
    items: list[SigningKeyView]


def api_key_scope(account_scope: str, requested: str | None) -> str:
    """The scope of a new key: the account's own, or one inside it."""
    if requested is None:
        return account_scope
    if not contains(account_scope, requested):
        raise InputError.for_field("$.scope", f"a key of a service account at {account_scope} cannot reach {requested}")
    return requested


# --- sync runs ---------------------------------------------------------------------------------------

Strategy = Literal["keep", "deactivate", "delete"]
"""What a sync does with principals that disappeared from its source."""


class Issue(msgspec.Struct, frozen=True):
    """Something a sync run skipped, and why."""

    item: str
    message: str


class SyncRun(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    source: str
    strategy: str
    started_at: dt.datetime
    finished_at: dt.datetime
    created: int
    updated: int
    unchanged: int
    deactivated: int
    deleted: int
    issues: list[Issue]


class SyncRunList(msgspec.Struct, frozen=True):
    items: list[SyncRun]


class ImportQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    source: Name = "default"
    """Name of the source: principals it imported before and leaves out now are handled by `strategy`."""
    strategy: Strategy = "keep"
    scope: str = "account"
    """Scope of the groups it creates."""


class SyncRunQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    source: str | None = None
    limit: Limit = 50


# --- ownership ---------------------------------------------------------------------------------------


class OrphanQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scope: str = "account"
    """Catalog scope whose entities are examined."""


class Orphan(msgspec.Struct, frozen=True):
    entityRef: str
    owner: str
    ownerStatus: str
    """`inactive` (deactivated) or `deleted`."""


class OrphanList(msgspec.Struct, frozen=True):
    items: list[Orphan]


class ReassignRequest(_Body, frozen=True, kw_only=True, forbid_unknown_fields=True):
    entityRefs: Annotated[list[str], msgspec.Meta(min_length=1, max_length=1000)]
    owner: Annotated[str, msgspec.Meta(pattern=r"^group:([A-Za-z0-9._-]+/)?[A-Za-z0-9._-]+$")]
    """The group that takes ownership, as an entity ref (`group:default/platform`)."""
    scope: str = "account"


class ReassignResult(msgspec.Struct, frozen=True):
    updated: int
    unchanged: int


# --- directory ---------------------------------------------------------------------------------------


class DirectoryLookup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class DirectoryUser(msgspec.Struct, frozen=True):
    dn: str
    username: str
    display_name: str
    emails: list[str]


class DirectoryUserList(msgspec.Struct, frozen=True):
    items: list[DirectoryUser]


class SsoCallback(msgspec.Struct, frozen=True, kw_only=True):
    """What the identity provider sends back to the callback (RFC 6749 §4.1.2)."""

    state: Annotated[str, msgspec.Meta(max_length=256)]
    code: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    error: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    error_description: str | None = None
    session_state: str | None = None
    iss: str | None = None
