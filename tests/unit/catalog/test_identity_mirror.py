"""identity.* events as catalog User and Group documents."""

from __future__ import annotations

from services.catalog.identity_mirror import (
    IDENTITY_STATUS_ANNOTATION,
    MirrorTarget,
    entity_name,
    targets_of,
    writes_for,
)
from shared.events import Actor, ResourceRef, new_event

ACTOR = Actor("user", "admin")


def event(type_, scope="account", **data):
    return new_event(type_, source="identity_sync", actor=ACTOR, scope=scope, resource=ResourceRef("x", "1"), data=data)


USER = {"id": "u1", "username": "ada@example.com", "display_name": "Ada", "emails": ["ada@example.com"], "active": True}
GROUP = {"id": "g1", "name": "web", "display_name": "Web", "parent_name": "eng"}


def test_entity_names_are_backstage_names():
    assert entity_name("ada@example.com") == "ada_example.com"
    assert entity_name("--x y--") == "x-y"
    assert len(entity_name("a" * 100)) == 63


def test_a_user_becomes_a_user_entity_with_its_status():
    (write,) = writes_for(event("identity.user.created", **USER), {})
    assert write.target == MirrorTarget("account", "User", "ada_example.com") and not write.orphan
    assert write.document["spec"]["profile"] == {"displayName": "Ada", "email": "ada@example.com"}
    assert write.document["metadata"]["annotations"][IDENTITY_STATUS_ANNOTATION] == "active"
    (write,) = writes_for(event("identity.user.deactivated", **{**USER, "active": False}), {})
    assert write.document["metadata"]["annotations"][IDENTITY_STATUS_ANNOTATION] == "inactive"


def test_a_deleted_user_stays_as_an_orphan():
    (write,) = writes_for(event("identity.user.deleted", **USER), {})
    assert write.orphan and write.document["metadata"]["annotations"][IDENTITY_STATUS_ANNOTATION] == "deleted"


def test_a_renamed_user_leaves_its_old_entity_orphaned():
    renamed = event("identity.user.updated", **{**USER, "username": "ada2", "changes": {"username": {"before": "ada"}}})
    old = MirrorTarget("account", "User", "ada")
    assert targets_of(renamed)[1] == old
    writes = writes_for(renamed, {old: writes_for(event("identity.user.created", **USER), {})[0].document})
    assert [w.target.name for w in writes] == ["ada2", "ada"] and writes[1].orphan


def test_groups_keep_their_members_and_parent_at_their_scope():
    target = MirrorTarget("account.acme", "Group", "web")
    (write,) = writes_for(event("identity.group.created", scope="account.acme", **GROUP), {})
    assert write.target == target and write.document["spec"]["parent"] == "eng"
    added = event("identity.group.member_added", scope="account.acme", group_name="web", username="ada@example.com")
    (with_member,) = writes_for(added, {target: write.document})
    assert with_member.document["spec"]["members"] == ["ada_example.com"]
    (updated,) = writes_for(
        event("identity.group.updated", scope="account.acme", **GROUP), {target: with_member.document}
    )
    assert updated.document["spec"]["members"] == ["ada_example.com"]
    removed = event("identity.group.member_removed", scope="account.acme", group_name="web", username="ada@example.com")
    assert writes_for(removed, {target: with_member.document})[0].document["spec"]["members"] == []


def test_other_identity_events_are_not_mirrored():
    assert writes_for(event("identity.api_key.created", key_id="k"), {}) == []
    assert writes_for(event("identity.group.member_added", group_name="web", username="a"), {}) == []
