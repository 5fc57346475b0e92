import pytest

from shared.access import AccessReplica, AccessSnapshot
from shared.errors import InputError
from shared.policy import (
    Policy,
    PolicyDeniedError,
    PolicyEngine,
    PolicySet,
    compile_policy,
    outcome_data,
    validate_policy_set,
)

OWNERSHIP = """package idp.catalog.ownership
import rego.v1

deny contains msg if {
    input.entity.kind == "Component"
    not input.entity.spec.owner
    msg := sprintf("component %s has no owner", [input.entity.metadata.name])
}

deny contains msg if {
    input.entity.kind == "Component"
    not input.entity.spec.lifecycle
    msg := "every component needs a lifecycle"
}

warn contains msg if {
    count(object.get(input.entity.metadata, "tags", [])) == 0
    msg := "no tags"
}
"""


def component(**spec):
    return {"entity": {"kind": "Component", "metadata": {"name": "web"}, "spec": spec}}


def test_a_policy_reports_each_violated_rule():
    policy = compile_policy(Policy("p1", "account", "ownership", OWNERSHIP))
    result = policy.evaluate(component(type="service"))
    assert result.deny == ("component web has no owner", "every component needs a lifecycle")
    assert result.warn == ("no tags",)
    assert policy.evaluate(component(owner="team", lifecycle="production")).deny == ()


def test_a_policy_that_does_not_compile_is_refused_with_the_compiler_message(capfd):
    with pytest.raises(InputError) as refused:
        compile_policy(
            Policy("p1", "account", "broken", "package x\nimport rego.v1\ndeny contains m if { input.a == }")
        )
    error = refused.value.errors[0]
    assert error.field == "source"
    assert "Invalid boolean operator" in error.message and "line 3" in error.message
    assert "Errors:" not in capfd.readouterr().out  # the library's printout stays out of our logs
    with pytest.raises(InputError):
        compile_policy(Policy("p2", "account", "no package", "deny := true"))


def test_policy_sets_apply_at_their_scope_and_below_in_their_mode():
    engine = PolicyEngine()
    engine.load(
        [Policy("p1", "account", "ownership", OWNERSHIP)],
        [
            PolicySet("s1", "account.acme", "acme rules", ("catalog_entity_create",), ("p1",), mode="deny"),
            PolicySet("s2", "account", "advice", ("catalog_entity_edit",), ("p1",), mode="warn"),
        ],
    )
    outcome = engine.evaluate("catalog_entity_create", "account.acme.pay", component(type="service"))
    assert outcome.denied and {v.message for v in outcome.denials} == {
        "component web has no owner",
        "every component needs a lifecycle",
    }
    assert not engine.evaluate("catalog_entity_create", "account.other", component()).denied
    edit = engine.evaluate("catalog_entity_edit", "account.acme", component())
    assert not edit.denied and len(edit.warnings) == 3
    engine.remove_policy_set("s1")
    assert not engine.evaluate("catalog_entity_create", "account.acme", component()).denied


def test_policy_set_validation():
    policies = {"p1": Policy("p1", "account.acme", "x", OWNERSHIP)}
    validate_policy_set(PolicySet("s", "account.acme.pay", "s", ("catalog_entity_create",), ("p1",)), policies)
    with pytest.raises(InputError) as refused:
        validate_policy_set(PolicySet("s", "account.other", "s", ("catalog_entity_create",), ("p1",)), policies)
    assert refused.value.errors[0].field == "policy_ids[0]"
    with pytest.raises(InputError) as refused:
        validate_policy_set(PolicySet("s", "account.acme", "s", ("catalog_entity_fly",), ("p1",)), policies)
    assert refused.value.errors[0].field == "actions[0]"


def test_enforcement_raises_a_403_listing_each_violated_rule():
    replica = AccessReplica()
    replica.load(
        AccessSnapshot(
            version=1,
            policies=[Policy("p1", "account", "ownership", OWNERSHIP)],
            policy_sets=[PolicySet("s1", "account", "rules", ("catalog_entity_create",), ("p1",))],
        )
    )
    with pytest.raises(PolicyDeniedError) as denied:
        replica.enforce_policies("catalog_entity_create", "account.acme", component())
    assert denied.value.status == 403
    assert sorted(e.message for e in denied.value.errors) == [
        "component web has no owner",
        "every component needs a lifecycle",
    ]
    assert all(e.field == "policy:p1" for e in denied.value.errors)
    allowed = replica.enforce_policies("catalog_entity_create", "account", component(owner="t", lifecycle="x"))
    assert allowed.applied == ("s1",) and [w.message for w in allowed.warnings] == ["no tags"]
    data = outcome_data("catalog_entity_create", allowed)
    assert data["warnings"][0]["message"] == "no tags" and data["policy_sets"] == ["s1"]
