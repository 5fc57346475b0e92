"""Scopes in entity references and reads (design.md §5: `account`, `account.<org>`, `account.<org>.<project>`).

A scoped ref is a Backstage ref followed by `@<scope>`: `component:default/payments@account.acme.shop`.
Backstage refs never contain `@` (names, namespaces and kinds cannot), so every Backstage ref is also a scoped
ref, at the scope the request names (`?scope=`, default `account`). A read covers one scope, and with
`includeParents` the scopes above it, with `includeChildren` the scopes below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.catalog.entity_ref import EntityRef, EntityRefError, parse_entity_ref
from services.catalog.model import check_scope
from shared.errors import InputError

SCOPE_SEPARATOR = "@"


@dataclass(frozen=True, slots=True)
class ScopeSelector:
    """The scopes a read covers."""

    scope: str
    parents: bool = False
    children: bool = False

    @classmethod
    def of(cls, scope: str, *, parents: bool = False, children: bool = False) -> ScopeSelector:
        return cls(check_scope(scope), parents, children)

    def exact_scopes(self) -> list[str]:
        """The scope itself and, with `parents`, every scope above it (`account.a.b` → `account`, `account.a`)."""
        parts = self.scope.split(".")
        first = 1 if self.parents else len(parts)
        return [".".join(parts[:n]) for n in range(first, len(parts) + 1)]

    def child_prefix(self) -> str | None:
        """What scopes below this one start with, when they are included."""
        return f"{self.scope}." if self.children else None


def parse_scoped_ref(
    value: Any, default_scope: str, field: str, *, default_kind: str | None = None
) -> tuple[EntityRef, str]:
    """A Backstage ref (string or `{kind, namespace, name, scope?}`) with an optional `@<scope>`, and the scope
    it names (else `default_scope`); InputError names `field`."""
    scope = default_scope
    try:
        if isinstance(value, str) and SCOPE_SEPARATOR in value:
            value, _, scope = value.rpartition(SCOPE_SEPARATOR)
        elif isinstance(value, dict) and "scope" in value:
            value = dict(value)
            scope = value.pop("scope")
            if not isinstance(scope, str):
                raise InputError.for_field(f"{field}.scope", "a scope is a string")
        ref = parse_entity_ref(value, default_kind=default_kind)
    except EntityRefError as exc:
        raise InputError.for_field(field, str(exc)) from None
    return ref, check_scope(scope, field)


def scoped_ref(ref: EntityRef | str, scope: str) -> str:
    return f"{ref}{SCOPE_SEPARATOR}{scope}"
