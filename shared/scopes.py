"""Scope strings (design.md §5): `account`, `account.<org>`, `account.<org>.<project>`."""

from __future__ import annotations

import re

from shared.errors import InputError

_SCOPE = re.compile(r"^account(\.[A-Za-z_][A-Za-z0-9_]{0,127}){0,2}$")


def check_scope(scope: str, field: str = "query.scope") -> str:
    """`scope` when it is a canonical scope string; otherwise an InputError naming `field`."""
    if not _SCOPE.match(scope):
        raise InputError.for_field(field, f"{scope!r} is not a scope (account, account.<org>, account.<org>.<project>)")
    return scope


def contains(outer: str, inner: str) -> bool:
    """Whether `inner` is `outer` or a scope below it."""
    return inner == outer or inner.startswith(outer + ".")
