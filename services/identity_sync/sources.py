"""What a sync source says exists: users and groups read from CSV or Backstage User/Group YAML, as a
`Snapshot` the sync engine applies. Pure parsing; a bad row is reported and skipped, not fatal."""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from services.identity_sync.model import Issue, Name, UserCreate, Username
from shared.yamlsafe import YamlError, load_yaml_documents


class SourceUser(msgspec.Struct, frozen=True, kw_only=True):
    username: Username
    display_name: str = ""
    emails: list[str] = []
    external_id: str | None = None
    active: bool = True


class SourceGroup(msgspec.Struct, frozen=True, kw_only=True):
    name: Name
    display_name: str = ""
    parent: str | None = None
    """Name of the parent group, from the same source."""
    members: list[str] = []
    """Usernames of the direct members."""
    external_id: str | None = None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    users: list[SourceUser] = []
    groups: list[SourceGroup] = []
    issues: list[Issue] = []


CSV_COLUMNS = ("username", "display_name", "emails", "groups", "active", "external_id")


def parse_csv(text: str) -> Snapshot:
    """Users from CSV with a header row: `username` (required), `display_name`, `emails` and `groups`
    (`;`-separated), `active` (true/false), `external_id`. Groups named in `groups` are created."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "username" not in reader.fieldnames:
        return Snapshot(issues=[Issue("header", "the first row must name the columns, including `username`")])
    unknown = set(reader.fieldnames) - set(CSV_COLUMNS)
    if unknown:
        return Snapshot(issues=[Issue("header", f"unknown columns: {', '.join(sorted(unknown))}")])
    users, issues, members = [], [], {}
    for line, row in enumerate(reader, start=2):
        active = (row.get("active") or "true").strip().lower()
        raw = {
            "username": (row.get("username") or "").strip(),
            "display_name": (row.get("display_name") or "").strip(),
            "emails": _split(row.get("emails")),
            "external_id": (row.get("external_id") or "").strip() or None,
            "active": active not in ("false", "0", "no", "n"),
        }
        user = _convert(raw, f"line {line}", issues)
        if user is None:
            continue
        users.append(user)
        for group in _split(row.get("groups")):
            members.setdefault(group, []).append(user.username)
    groups = [g for name, usernames in members.items() if (g := _group(name, usernames, issues)) is not None]
    return Snapshot(users=users, groups=groups, issues=issues)


def parse_backstage(text: str | bytes) -> Snapshot:
    """Users and groups from Backstage `User`/`Group` entities (other kinds are ignored): memberships
    from `spec.memberOf` and `spec.members`, nesting from `spec.parent` and `spec.children`."""
    try:
        documents = load_yaml_documents(text)
    except YamlError as exc:
        return Snapshot(issues=[Issue("yaml", str(exc))])
    issues: list[Issue] = []
    users: list[SourceUser] = []
    group_docs: dict[str, dict[str, Any]] = {}
    members: dict[str, list[str]] = {}
    parents: dict[str, str] = {}
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict) or doc.get("kind") not in ("User", "Group"):
            continue
        metadata, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        name = str(metadata.get("name", ""))
        profile = spec.get("profile") or {}
        if doc["kind"] == "User":
            raw = {
                "username": name,
                "display_name": str(profile.get("displayName") or ""),
                "emails": [str(profile["email"])] if profile.get("email") else [],
            }
            user = _convert(raw, f"document {index + 1} (User {name})", issues)
            if user is not None:
                users.append(user)
                for group in spec.get("memberOf") or []:
                    members.setdefault(_name_of(group), []).append(user.username)
        else:
            group_docs[name] = {"display_name": str(profile.get("displayName") or ""), "index": index}
            for username in spec.get("members") or []:
                members.setdefault(name, []).append(_name_of(username))
            if spec.get("parent"):
                parents[name] = _name_of(spec["parent"])
            for child in spec.get("children") or []:
                parents.setdefault(_name_of(child), name)
    groups = []
    for name, info in group_docs.items():
        raw = {
            "name": name,
            "display_name": info["display_name"],
            "parent": parents.get(name),
            "members": sorted(set(members.get(name, []))),
        }
        group = _convert(raw, f"document {info['index'] + 1} (Group {name})", issues, SourceGroup)
        if group is not None:
            groups.append(group)
    return Snapshot(users=users, groups=groups, issues=issues)


def _name_of(ref: Any) -> str:
    """`group:default/team-a` → `team-a`."""
    return str(ref).rpartition(":")[2].rpartition("/")[2]


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(";") if part.strip()]


def _group(name: str, usernames: list[str], issues: list[Issue]) -> SourceGroup | None:
    return _convert({"name": name, "members": sorted(set(usernames))}, f"group {name}", issues, SourceGroup)


def _convert(raw: dict[str, Any], item: str, issues: list[Issue], type_: type = SourceUser) -> Any:
    try:
        converted = msgspec.convert(raw, type_)
        if type_ is SourceUser:  # the same rules as a user created through the API
            msgspec.convert({k: v for k, v in raw.items() if k != "external_id" or v}, UserCreate)
        return converted
    except msgspec.ValidationError as exc:
        issues.append(Issue(item, str(exc)))
        return None
