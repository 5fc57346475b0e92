"""Group nesting rules and event payloads, without I/O."""

from __future__ import annotations

import pytest

from services.identity_sync.model import check_no_cycle, check_parent_scope, name_for
from shared.errors import ConflictError, InputError


def test_a_group_cannot_become_its_own_ancestor():
    parents = {"c": "b", "b": "a", "a": None}
    check_no_cycle("x", "c", parents)
    with pytest.raises(ConflictError, match="cycle"):
        check_no_cycle("a", "c", parents)
    with pytest.raises(ConflictError, match="cycle"):
        check_no_cycle("a", "a", {"a": None})


def test_a_group_nests_only_under_its_scope_or_above():
    check_parent_scope("account.acme.web", "account.acme")
    check_parent_scope("account.acme", "account.acme")
    with pytest.raises(InputError, match="cannot nest"):
        check_parent_scope("account.acme", "account.acme.web")
    with pytest.raises(InputError, match="cannot nest"):
        check_parent_scope("account.acmex", "account.acme")


def test_group_names_from_display_names():
    assert name_for("Platform Team") == "platform-team"
    assert name_for("  R&D / Ops  ") == "r-d-ops"
    assert name_for("***") == "group"
    assert len(name_for("x" * 100)) == 63
