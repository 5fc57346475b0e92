"""Scorecards: validation, filters, weighted scores and the level ladder."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.scorecard.model import ScorecardSpec, changed_checks, compile_scorecard, retry_delay, score_of
from shared.errors import InputError


def spec(**overrides: Any) -> ScorecardSpec:
    raw = {
        "id": "production-readiness",
        "name": "Production readiness",
        "owner": "group:default/platform",
        "levels": ["Bronze", "Silver", "Gold"],
        "checks": [
            {
                "id": "owner",
                "name": "Has owner",
                "level": "Bronze",
                "weight": 2,
                "rule": {"op": "exists", "path": "spec.owner"},
            },
            {
                "id": "docs",
                "name": "Docs",
                "level": "Silver",
                "rule": {"op": "exists", "path": "metadata.annotations.backstage.io/techdocs-ref"},
            },
            {
                "id": "oncall",
                "name": "On call",
                "level": "Gold",
                "rule": {"op": "exists", "path": "metadata.annotations.pagerduty.com/service-id"},
            },
        ],
        **overrides,
    }
    return msgspec.convert(raw, ScorecardSpec)


def entity(scope: str = "account", **spec_fields: Any) -> dict[str, Any]:
    return {
        "kind": "Component",
        "metadata": {"name": "x", "tags": ["java"], "annotations": {"seed-idp.dev/scope": scope}},
        "spec": {"type": "service", "lifecycle": "production", **spec_fields},
        "relations": [{"type": "ownedBy", "targetRef": "group:default/team-a"}],
    }


def test_score_is_the_weighted_pass_rate_and_level_needs_every_level_below():
    card = compile_scorecard(spec())
    assert score_of(card, {"owner": "pass", "docs": "pass", "oncall": "fail"}) == score_of(
        card, {"owner": "pass", "docs": "pass", "oncall": "unknown"}
    )
    full = score_of(card, {"owner": "pass", "docs": "pass", "oncall": "pass"})
    assert (full.score, full.level, full.passed) == (100.0, "Gold", 3)
    partial = score_of(card, {"owner": "pass", "docs": "pass", "oncall": "fail"})
    assert (partial.score, partial.level) == (75.0, "Silver")
    gap = score_of(card, {"owner": "pass", "docs": "fail", "oncall": "pass"})
    assert (gap.score, gap.level) == (75.0, "Bronze")
    assert score_of(card, {"owner": "fail", "docs": "pass", "oncall": "pass"}).level is None


def test_filters_select_by_scope_kind_type_lifecycle_owner_tags_and_any_field():
    applies = compile_scorecard(spec(scope="account.org1")).applies
    assert (
        applies(entity("account.org1.proj")) and not applies(entity("account")) and not applies(entity("account.org2"))
    )
    applies = compile_scorecard(
        spec(
            filter={
                "kinds": ["component"],
                "types": ["Service"],
                "lifecycles": ["production"],
                "owners": ["team-a"],
                "tags": ["java"],
                "where": {"op": "not-equals", "path": "spec.tier", "value": 3},
            }
        )
    ).applies
    assert applies(entity())
    assert not applies(entity(tier=3))
    assert not applies(entity(lifecycle="experimental"))
    assert not compile_scorecard(spec(filter={"owners": ["group:default/team-b"]})).applies(entity())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"scope": "nowhere"}, "$.scope"),
        ({"levels": ["Bronze", "Bronze"]}, "$.levels"),
        ({"levels": ["Bronze"]}, "$.checks[1].level"),
        ({"filter": {"where": {"op": "matches", "path": "a", "pattern": "(a*)*"}}}, "$.filter.where.pattern"),
    ],
)
def test_invalid_scorecards_name_the_field(overrides, field):
    with pytest.raises(InputError) as caught:
        compile_scorecard(spec(**overrides))
    assert caught.value.errors[0].field == field


def test_duplicate_check_ids_are_rejected():
    raw = msgspec.to_builtins(spec())
    raw["checks"][1]["id"] = "owner"
    with pytest.raises(InputError, match="used twice"):
        compile_scorecard(msgspec.convert(raw, ScorecardSpec))


def test_changed_checks_are_the_new_and_edited_ones_unless_the_filter_changed():
    before = spec()
    raw = msgspec.to_builtins(before)
    raw["checks"][1]["rule"] = {"op": "exists", "path": "spec.docs"}
    raw["checks"][2]["name"] = "Renamed only"
    raw["checks"].append({"id": "new", "name": "New", "level": "Gold", "rule": {"op": "exists", "path": "spec.x"}})
    after = msgspec.convert(raw, ScorecardSpec)
    assert changed_checks(before, after) == ["docs", "new"]
    assert changed_checks(before, msgspec.structs.replace(after, scope="account.org1")) is None
    assert changed_checks(None, after) is None


def test_update_changes_apply_to_a_served_entity_like_the_catalog_computes_them():
    from services.scorecard.model import apply_changes, patchable
    from shared.events import diff_fields

    served = {
        "kind": "Component",
        "metadata": {
            "name": "x",
            "uid": "u",
            "generation": 1,
            "annotations": {"a.io/b": "1", "seed-idp.dev/scope": "account"},
        },
        "spec": {"type": "service", "lifecycle": "experimental", "owner": "team-a", "links": {"docs": "d"}},
        "relations": [{"type": "ownedBy", "targetRef": "group:default/team-a"}],
    }
    after = {
        "kind": "Component",
        "metadata": {"name": "x", "annotations": {"a.io/b": "2", "c.io/d": "new", "seed-idp.dev/scope": "account"}},
        "spec": {"type": "service", "lifecycle": "production", "owner": "team-a", "tier": {"level": 1}},
    }
    before = {k: v for k, v in served.items() if k != "relations"}
    before["metadata"] = {k: v for k, v in served["metadata"].items() if k not in ("uid", "generation")}
    changes = diff_fields(before, after)
    assert all(map(patchable, changes))
    patched = apply_changes(served, [changes], 2)
    assert patched["metadata"]["annotations"] == after["metadata"]["annotations"]
    assert patched["spec"] == after["spec"]
    assert patched["relations"] == served["relations"] and patched["metadata"]["generation"] == 2
    assert served["spec"]["lifecycle"] == "experimental"  # the input is not modified
    assert not patchable("spec.owner") and not patchable("orphan") and not patchable("spec")


def test_retry_delays_double_up_to_the_cap_with_jitter_in_the_upper_half():
    assert [retry_delay(n, 5, 600, 0.0) for n in (1, 2, 3)] == [2.5, 5.0, 10.0]
    assert [retry_delay(n, 5, 600, 0.999999) for n in (1, 2)] == pytest.approx([5.0, 10.0])
    assert retry_delay(20, 5, 600, 0.0) == 300.0
