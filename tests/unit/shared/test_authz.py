import pytest

from shared.authz import (
    AccessControl,
    Resource,
    ResourceGroup,
    ResourceSelector,
    Role,
    RoleBinding,
    Snapshot,
    Visibility,
    all_permissions,
    validate_binding,
    validate_permissions,
    validate_resource_group,
    visibility_condition,
)
from shared.errors import InputError
from shared.scopes import ancestors, contains

ENTITY = "catalog_entity"


def entity(scope: str, entity_id: str = "component:default/web", **fields) -> Resource:
    return Resource(ENTITY, scope, entity_id, **fields)


def state(*bindings: RoleBinding, groups=(), roles=(), parents=None, memberships=None) -> AccessControl:
    access = AccessControl()
    access.load(
        Snapshot(
            roles=list(roles),
            resource_groups=list(groups),
            bindings=list(bindings),
            group_parents=parents or {},
            memberships=memberships or {},
        )
    )
    return access


ORG_ALL = ResourceGroup("rg-org", "account.acme", "everything in acme", all_resources=True, include_child_scopes=True)
PROJECT_ENTITIES = ResourceGroup("rg-pay", "account.acme.pay", "pay entities", selectors=(ResourceSelector(ENTITY),))


def test_scope_helpers():
    assert contains("account.acme", "account.acme.pay")
    assert contains("account.acme", "account.acme")
    assert not contains("account.acme", "account.acmex")
    assert ancestors("account.a.b") == ["account", "account.a", "account.a.b"]


def test_binding_grants_its_role_on_what_its_resource_group_selects():
    access = state(RoleBinding("b1", "account.acme", "user:ann", "_viewer", "rg-org"), groups=[ORG_ALL])
    decision = access.check("user:ann", "catalog_entity_view", entity("account.acme.pay"))
    assert decision.allowed and decision.binding_id == "b1" and decision.role_id == "_viewer"
    assert not access.may("user:ann", "catalog_entity_edit", entity("account.acme.pay"))
    assert not access.may("user:ann", "catalog_entity_view", entity("account.other"))
    assert not access.may("user:ann", "catalog_entity_view", entity("account"))
    assert not access.may("user:bob", "catalog_entity_view", entity("account.acme"))


def test_access_is_the_union_over_nested_groups():
    access = state(
        RoleBinding("b1", "account.acme", "group:platform", "_catalog_editor", "rg-org"),
        groups=[ORG_ALL],
        parents={"sre": ["infra"], "infra": ["platform"], "platform": ["sre"]},  # a cycle is tolerated
        memberships={"user:ann": ["sre"]},
    )
    assert access.may("user:ann", "catalog_entity_edit", entity("account.acme"))
    assert access.subjects_of("user:ann") == {"user:ann", "group:sre", "group:infra", "group:platform"}
    access.set_memberships("user:ann", [])
    assert not access.may("user:ann", "catalog_entity_edit", entity("account.acme"))


def test_resource_group_reach_without_children_chosen_children_and_named_resources():
    own_scope_only = ResourceGroup("rg1", "account.acme", "acme only", all_resources=True)
    chosen = ResourceGroup("rg2", "account.acme", "pay only", all_resources=True, child_scopes=("account.acme.pay",))
    named = ResourceGroup(
        "rg3", "account.acme", "one entity", selectors=(ResourceSelector(ENTITY, frozenset({"component:default/web"})),)
    )
    access = state(
        RoleBinding("b1", "account.acme", "user:a", "_viewer", "rg1"),
        RoleBinding("b2", "account.acme", "user:b", "_viewer", "rg2"),
        RoleBinding("b3", "account.acme", "user:c", "_viewer", "rg3"),
        groups=[own_scope_only, chosen, named],
    )
    assert access.may("user:a", "catalog_entity_view", entity("account.acme"))
    assert not access.may("user:a", "catalog_entity_view", entity("account.acme.pay"))
    assert access.may("user:b", "catalog_entity_view", entity("account.acme.pay"))
    assert not access.may("user:b", "catalog_entity_view", entity("account.acme.shop"))
    assert access.may("user:c", "catalog_entity_view", entity("account.acme"))
    assert not access.may("user:c", "catalog_entity_view", entity("account.acme", "component:default/other"))
    # The same name in another scope is another resource.
    assert not access.may("user:c", "catalog_entity_view", entity("account.acme.pay"))
    # A selector for one type grants nothing on another.
    assert not access.may("user:c", "catalog_location_view", Resource("catalog_location", "account.acme", "x"))


def test_restricted_resources_are_for_owners_and_admins():
    access = state(
        RoleBinding("b1", "account", "user:viewer", "_viewer", "rg-all"),
        RoleBinding("b2", "account", "user:root", "_idp_admin", "rg-all"),
        groups=[ResourceGroup("rg-all", "account", "all", all_resources=True, include_child_scopes=True)],
        memberships={"user:owner": ["team"]},
    )
    secret = entity("account.acme", owners=frozenset({"group:team"}), restricted=True)
    assert not access.may("user:viewer", "catalog_entity_view", secret)
    assert access.may("user:root", "catalog_entity_view", secret)
    # Owners may see (through their group) and, by default, edit their own resources.
    assert not access.may("user:owner", "catalog_entity_view", secret)  # no binding grants view at all
    assert access.may("user:owner", "catalog_entity_edit", entity("account.acme", owners=frozenset({"group:team"})))
    assert not AccessControl(owners_may_edit=False).may(
        "user:owner", "catalog_entity_edit", entity("account.acme", owners=frozenset({"user:owner"}))
    )


def test_visibility_describes_the_sql_filter():
    access = state(
        RoleBinding("b1", "account.acme", "user:ann", "_viewer", "rg-org"),
        RoleBinding("b2", "account.acme.pay", "user:ann", "_viewer", "rg-pay"),
        groups=[ORG_ALL, PROJECT_ENTITIES],
    )
    seen = access.visibility("user:ann", "catalog_entity_view")
    assert seen.subtrees == {"account.acme"} and seen.scopes == {"account.acme.pay"}
    assert not seen.everything and not seen.sees_restricted
    assert access.visibility("user:nobody", "catalog_entity_view").nothing


def test_visibility_covers_what_its_sql_condition_selects():
    seen = Visibility(
        scopes=frozenset({"account.a"}),
        subtrees=frozenset({"account.b"}),
        named=frozenset({("account.c", "component:default/x")}),
    )
    assert seen.covers("account.a") and not seen.covers("account.a.p")
    assert seen.covers("account.b") and seen.covers("account.b.p") and not seen.covers("account.bb")
    assert seen.covers("account.c", "component:default/x") and not seen.covers("account.c", "component:default/y")
    args: list = []

    def arg(value):
        args.append(value)
        return f"${len(args)}"

    condition = visibility_condition(seen, "scope", arg, id_column="ref")
    assert condition == (
        "(scope = ANY($1::text[]) OR starts_with(scope, 'account.b.')"
        " OR (scope = 'account.c' AND ref = ANY($2::text[])))"
    )
    assert args == [["account.a", "account.b"], ["component:default/x"]]
    assert visibility_condition(Visibility(), "scope", arg) == "FALSE"


def test_only_owner_editable_permissions_follow_the_owner_rule():
    access = state(memberships={"user:owner": ["team"]})
    owned = entity("account.acme", owners=frozenset({"group:team"}))
    assert access.may("user:owner", "catalog_entity_edit", owned)
    assert not access.may("user:owner", "catalog_entity_delete", owned)
    assert not access.may("user:owner", "catalog_location_edit", owned)


def test_changes_take_effect_on_the_next_check():
    access = state(groups=[ORG_ALL])
    assert not access.may("user:ann", "catalog_entity_view", entity("account.acme"))
    access.put_binding(RoleBinding("b1", "account.acme", "user:ann", "_viewer", "rg-org"))
    assert access.may("user:ann", "catalog_entity_view", entity("account.acme"))
    access.remove_resource_group("rg-org")
    assert not access.may("user:ann", "catalog_entity_view", entity("account.acme"))
    access.put_resource_group(ORG_ALL)
    access.remove_subject("user:ann")
    assert not access.may("user:ann", "catalog_entity_view", entity("account.acme"))


def test_custom_role():
    role = Role("r1", "account.acme", "Entity creator", frozenset({"catalog_entity_create"}))
    access = state(RoleBinding("b1", "account.acme", "user:ann", "r1", "rg-org"), groups=[ORG_ALL], roles=[role])
    assert access.may("user:ann", "catalog_entity_create", Resource(ENTITY, "account.acme.pay"))
    assert not access.may("user:ann", "catalog_entity_delete", entity("account.acme.pay"))


def test_a_project_binding_cannot_reach_its_org():
    project_role = Role("r1", "account.acme.pay", "Project admin", frozenset({"*"}))
    project_group = ResourceGroup("rg1", "account.acme.pay", "pay", all_resources=True, include_child_scopes=True)
    # Binding a role at the org with a project-level resource group is refused...
    with pytest.raises(InputError) as refused:
        validate_binding(RoleBinding("b", "account.acme", "user:ann", "r1", "rg1"), project_role, project_group)
    assert refused.value.errors[0].field == "role_id"
    with pytest.raises(InputError) as refused:
        validate_binding(
            RoleBinding("b", "account.acme", "user:ann", "_idp_admin", "rg1"),
            Role("_idp_admin", "account", "", frozenset()),
            project_group,
        )
    assert refused.value.errors[0].field == "resource_group_id"
    # ...and a project admin holds no permission to create bindings at the org.
    access = state(
        RoleBinding("b1", "account.acme.pay", "user:ann", "r1", "rg1"), groups=[project_group], roles=[project_role]
    )
    assert access.may("user:ann", "identity_binding_create", Resource("identity_binding", "account.acme.pay"))
    assert not access.may("user:ann", "identity_binding_create", Resource("identity_binding", "account.acme"))


def test_a_resource_group_cannot_name_scopes_outside_its_own():
    with pytest.raises(InputError) as refused:
        validate_resource_group(
            ResourceGroup("rg", "account.acme.pay", "x", all_resources=True, child_scopes=("account.other.pay",))
        )
    assert refused.value.errors[0].field == "child_scopes[0]"
    with pytest.raises(InputError):
        validate_resource_group(ResourceGroup("rg", "account.acme", "x", selectors=(ResourceSelector("nope"),)))
    with pytest.raises(InputError):
        validate_resource_group(ResourceGroup("rg", "account.acme", "x"))


def test_permission_names_are_validated():
    assert "catalog_entity_view" in all_permissions()
    assert validate_permissions(["catalog_entity_view", "*"]) == {"catalog_entity_view", "*"}
    with pytest.raises(InputError) as refused:
        validate_permissions(["catalog_entity_view", "catalog_entity_fly"])
    assert "unknown permission" in refused.value.errors[0].message
