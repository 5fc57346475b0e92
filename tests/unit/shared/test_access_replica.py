from shared.access import AccessReplica, AccessSnapshot
from shared.auth import Principal
from shared.authz import Resource, ResourceGroup, RoleBinding

ANN = Principal(kind="user", id="ann")
PAY = Resource("catalog_entity", "account.acme.pay", "component:default/web")
GROUP = ResourceGroup("rg", "account.acme", "acme", all_resources=True, include_child_scopes=True)
BINDING = {
    "id": "b1",
    "scope": "account.acme",
    "subject": "group:team",
    "role_id": "_viewer",
    "resource_group_id": "rg",
}


def test_events_before_the_snapshot_wait_and_older_ones_are_skipped():
    replica = AccessReplica()
    replica.apply_event("identity.role_binding.created", "b1", {"access_version": 5, "role_binding": BINDING})
    replica.apply_event("identity.group.member_added", "team", {"access_version": 7, "user_id": "ann"})
    assert not replica.loaded and not replica.check(ANN, "catalog_entity_view", PAY).allowed
    # The snapshot already holds version 5 (the binding), not the membership of version 7.
    replica.load(AccessSnapshot(version=6, resource_groups=[GROUP], role_bindings=[RoleBinding(**BINDING)]))
    assert replica.version == 7 and replica.check(ANN, "catalog_entity_view", PAY).allowed
    # A late, older event changes nothing; events without a version are not access changes.
    replica.apply_event("identity.group.member_removed", "team", {"access_version": 6, "user_id": "ann"})
    replica.apply_event("identity.group.member_removed", "team", {"user_id": "ann"})
    assert replica.check(ANN, "catalog_entity_view", PAY).allowed


def test_principal_changes_nesting_and_deletion():
    replica = AccessReplica()
    replica.load(AccessSnapshot(version=1, resource_groups=[GROUP], role_bindings=[RoleBinding(**BINDING)]))
    replica.apply_event("identity.group.created", "sre", {"access_version": 2, "parent": "team"})
    replica.apply_event("identity.group.member_added", "sre", {"access_version": 3, "user_id": "ann"})
    assert replica.check(ANN, "catalog_entity_view", PAY).allowed  # through sre, nested in team
    replica.apply_event("identity.group.updated", "sre", {"access_version": 4, "parent": None})
    assert not replica.check(ANN, "catalog_entity_view", PAY).allowed
    replica.apply_event("identity.group.updated", "sre", {"access_version": 5, "parent": "team"})
    replica.apply_event("identity.group.deleted", "team", {"access_version": 6})
    assert not replica.check(ANN, "catalog_entity_view", PAY).allowed  # the group's bindings went with it
    replica.apply_event(
        "identity.role_binding.created",
        "b2",
        {"access_version": 7, "role_binding": {**BINDING, "id": "b2", "subject": "user:ann"}},
    )
    assert replica.check(ANN, "catalog_entity_view", PAY).allowed
    replica.apply_event("identity.user.deleted", "ann", {"access_version": 8})
    assert not replica.check(ANN, "catalog_entity_view", PAY).allowed


def test_owners_pass_the_route_check_for_owner_edits_only_where_they_may_view():
    replica = AccessReplica()
    replica.load(AccessSnapshot(version=1, resource_groups=[GROUP], role_bindings=[RoleBinding(**BINDING)]))
    replica.apply_event("identity.group.member_added", "team", {"access_version": 2, "user_id": "ann"})
    # Ann views through her group; whether she may edit an entity is decided by the handler, on its owners.
    assert replica.holds_anywhere(ANN, "catalog_entity_edit")
    assert not replica.holds_anywhere(ANN, "catalog_entity_delete")
    assert not replica.holds_anywhere(Principal(kind="user", id="nobody"), "catalog_entity_edit")
    strict = AccessReplica(owners_may_edit=False)
    strict.load(AccessSnapshot(version=2, resource_groups=[GROUP], role_bindings=[RoleBinding(**BINDING)]))
    assert not strict.holds_anywhere(ANN, "catalog_entity_edit")
