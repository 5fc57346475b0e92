"""LDAP / Active Directory as a sync source (`ldap3`): paged searches under configured base DNs, attribute
mapping, nested groups (a group listed as a member of another becomes its child), on a schedule and on demand.

ldap3 is synchronous, so directory reads run in a worker thread; applying the snapshot is the shared sync
engine's job. The bind password lives only in settings: never in events, logs or sync reports.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Any

import ldap3
import msgspec
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from services.identity_sync.model import DirectoryUser, Issue, Name, Strategy, name_for
from services.identity_sync.sources import Snapshot, SourceGroup, SourceUser
from shared.errors import InputError, ServiceUnavailableError

log = logging.getLogger(__name__)

_ATTRIBUTE = r"^[A-Za-z][A-Za-z0-9-]{0,63}$"
Attribute = Annotated[str, msgspec.Meta(pattern=_ATTRIBUTE)]
# Characters with a meaning in an RFC 4515 filter; a value from a request that holds one is refused.
_FILTER_METACHARACTERS = re.compile(r"[*()\\\x00]")


class LdapSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One directory to sync from (YAML `ldap:` in `IDP_CONFIG`)."""

    url: str
    """`ldap://host:389` or `ldaps://host:636`."""
    bind_dn: str = ""
    bind_password: str = ""
    """Secret: read from configuration only, never logged or emitted."""
    user_base_dn: str
    user_filter: str = "(objectClass=inetOrgPerson)"
    group_base_dn: str
    group_filter: str = "(objectClass=groupOfNames)"
    username_attribute: Attribute = "uid"
    display_name_attribute: Attribute = "cn"
    email_attribute: Attribute = "mail"
    user_id_attribute: Attribute = "entryUUID"
    """Stable id of a user, kept as its `external_id` (`objectGUID` on Active Directory)."""
    group_name_attribute: Attribute = "cn"
    group_display_name_attribute: Attribute = "description"
    group_member_attribute: Attribute = "member"
    group_id_attribute: Attribute = "entryUUID"
    page_size: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 500
    source: Name = "ldap"
    strategy: Strategy = "deactivate"
    """What happens to users that left the directory (or its filter)."""
    group_scope: str = "account"
    sync_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """0 syncs on demand only."""
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=600)] = 30

    def __post_init__(self) -> None:
        for name in ("user_filter", "group_filter"):
            value = getattr(self, name)
            if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
                raise ValueError(f"ldap.{name} is not an LDAP filter in parentheses")

    def __repr__(self) -> str:  # keeps the bind password out of any log line that prints settings
        return f"LdapSettings(url={self.url!r}, bind_dn={self.bind_dn!r}, source={self.source!r})"


def _connect(config: LdapSettings) -> ldap3.Connection:
    server = ldap3.Server(config.url, connect_timeout=config.timeout_seconds, get_info=ldap3.NONE)
    return ldap3.Connection(
        server,
        user=config.bind_dn or None,
        password=config.bind_password or None,
        auto_bind=True,
        read_only=True,
        receive_timeout=config.timeout_seconds,
        raise_exceptions=True,
    )


def _first(entry: dict[str, Any], attribute: str) -> str | None:
    value = entry.get(attribute)
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value) if value not in (None, "") else None


def _all(entry: dict[str, Any], attribute: str) -> list[str]:
    value = entry.get(attribute) or []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _paged(conn: ldap3.Connection, base: str, search_filter: str, attributes: list[str], size: int):
    """Every entry, one page of `size` at a time (RFC 2696), as (dn, attributes)."""
    for entry in conn.extend.standard.paged_search(
        base, search_filter, ldap3.SUBTREE, attributes=attributes, paged_size=size, generator=True
    ):
        if entry.get("type") == "searchResEntry":
            yield entry["dn"], dict(entry["attributes"])


def read_directory(config: LdapSettings) -> Snapshot:
    """The users and groups the directory holds under the configured base DNs and filters."""
    issues: list[Issue] = []
    user_attributes = [
        config.username_attribute,
        config.display_name_attribute,
        config.email_attribute,
        config.user_id_attribute,
    ]
    group_attributes = [
        config.group_name_attribute,
        config.group_display_name_attribute,
        config.group_member_attribute,
        config.group_id_attribute,
    ]
    try:
        with _connect(config) as conn:
            user_entries = list(
                _paged(conn, config.user_base_dn, config.user_filter, user_attributes, config.page_size)
            )
            group_entries = list(
                _paged(conn, config.group_base_dn, config.group_filter, group_attributes, config.page_size)
            )
    except LDAPException as exc:
        raise ServiceUnavailableError(f"the directory could not be read: {type(exc).__name__}") from None
    users, username_of = [], {}
    for dn, entry in user_entries:
        raw = {
            "username": _first(entry, config.username_attribute),
            "display_name": _first(entry, config.display_name_attribute) or "",
            "emails": _all(entry, config.email_attribute),
            "external_id": _first(entry, config.user_id_attribute),
        }
        try:
            users.append(msgspec.convert(raw, SourceUser))
            username_of[dn.lower()] = raw["username"]
        except msgspec.ValidationError as exc:
            issues.append(Issue(dn, str(exc)))
    group_name_of = {
        dn.lower(): name_for(_first(entry, config.group_name_attribute) or "") for dn, entry in group_entries
    }
    parent_of: dict[str, str] = {}
    groups_members: dict[str, list[str]] = {}
    for dn, entry in group_entries:
        name = group_name_of[dn.lower()]
        members = []
        for member_dn in _all(entry, config.group_member_attribute):
            key = member_dn.lower()
            if key in username_of:
                members.append(username_of[key])
            elif key in group_name_of:
                child = group_name_of[key]
                if child in parent_of and parent_of[child] != name:
                    issues.append(Issue(member_dn, f"in several groups; kept under {parent_of[child]}"))
                else:
                    parent_of[child] = name
        groups_members[dn.lower()] = members
    groups = []
    for dn, entry in group_entries:
        name = group_name_of[dn.lower()]
        raw = {
            "name": name,
            "display_name": _first(entry, config.group_display_name_attribute)
            or _first(entry, config.group_name_attribute)
            or "",
            "parent": parent_of.get(name),
            "members": sorted(set(groups_members[dn.lower()])),
            "external_id": _first(entry, config.group_id_attribute),
        }
        try:
            groups.append(msgspec.convert(raw, SourceGroup))
        except msgspec.ValidationError as exc:
            issues.append(Issue(dn, str(exc)))
    return Snapshot(users=users, groups=groups, issues=issues)


def lookup_filter(config: LdapSettings, username: str) -> str:
    """The filter finding one user by username; refuses filter syntax in the value (and escapes it anyway)."""
    if _FILTER_METACHARACTERS.search(username):
        raise InputError.for_field("query.username", "must not contain LDAP filter characters * ( ) \\ or NUL")
    return f"(&{config.user_filter}({config.username_attribute}={escape_filter_chars(username)}))"


def find_users(config: LdapSettings, username: str) -> list[DirectoryUser]:
    """Directory users whose username is exactly `username` (what an administrator checks before a sync)."""
    search_filter = lookup_filter(config, username)
    attributes = [config.username_attribute, config.display_name_attribute, config.email_attribute]
    try:
        with _connect(config) as conn:
            entries = list(_paged(conn, config.user_base_dn, search_filter, attributes, config.page_size))
    except LDAPException as exc:
        raise ServiceUnavailableError(f"the directory could not be read: {type(exc).__name__}") from None
    return [
        DirectoryUser(
            dn=dn,
            username=_first(entry, config.username_attribute) or "",
            display_name=_first(entry, config.display_name_attribute) or "",
            emails=_all(entry, config.email_attribute),
        )
        for dn, entry in entries
    ]


async def read_directory_async(config: LdapSettings) -> Snapshot:
    return await asyncio.to_thread(read_directory, config)
