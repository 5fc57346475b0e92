"""Policy-as-code: Rego policies evaluated in-process with regopy, grouped in policy sets attached to actions.

A policy is a Rego module whose package defines `deny` and/or `warn` as sets of messages:

    package idp.catalog.ownership
    import rego.v1
    deny contains msg if { input.entity.kind == "Component"; not input.entity.spec.owner; msg := "..." }

A policy set attaches policies to actions (permission names such as `catalog_entity_create`) at a scope, in
mode `deny` (a violation refuses the action) or `warn` (the action proceeds; the message is returned in a
header and recorded). Every set at the action's scope or above applies. Each policy is compiled once into a
regopy bundle; an evaluation sets the input and runs the bundle (a few hundred microseconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import msgspec

from shared.authz import validate_permissions
from shared.errors import FieldError, InputError, NotAllowedError
from shared.scopes import ancestors, check_scope

Mode = Literal["deny", "warn"]
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$", re.MULTILINE)
_ERROR_MESSAGE = re.compile(r"\(errormsg \d+:([^\n]*)\)")
_ERROR_AT = re.compile(r"\(error \d+:[^|]*\|(\d+)\|")
MAX_POLICY_BYTES = 64 * 1024


class Policy(msgspec.Struct, frozen=True):
    id: str
    scope: str
    name: str
    source: str


class PolicySet(msgspec.Struct, frozen=True):
    id: str
    scope: str
    name: str
    actions: tuple[str, ...]
    policy_ids: tuple[str, ...]
    mode: Mode = "deny"
    enabled: bool = True


class Violation(msgspec.Struct, frozen=True):
    policy_id: str
    policy_set_id: str
    message: str


class PolicyOutcome(msgspec.Struct, frozen=True):
    denials: tuple[Violation, ...] = ()
    warnings: tuple[Violation, ...] = ()
    applied: tuple[str, ...] = ()
    """Ids of the policy sets evaluated."""

    @property
    def denied(self) -> bool:
        return bool(self.denials)


WARNING_HEADER = "X-Policy-Warning"
"""One response header per warning of a `warn` policy set (the action went ahead)."""


class PolicyDeniedError(NotAllowedError):
    """A `deny` policy set refused the action: 403 listing each violated rule's message."""

    title, slug = "Denied by policy", "policy-denied"

    def __init__(self, outcome: PolicyOutcome) -> None:
        messages = [violation.message for violation in outcome.denials]
        super().__init__(
            "denied by policy: " + "; ".join(messages),
            errors=[FieldError(f"policy:{v.policy_id}", v.message) for v in outcome.denials],
        )
        self.outcome = outcome


def outcome_data(action: str, outcome: PolicyOutcome) -> dict[str, Any]:
    """The payload of a `<service>.policy.evaluated` event."""
    return {
        "action": action,
        "policy_sets": list(outcome.applied),
        "denials": [msgspec.to_builtins(v) for v in outcome.denials],
        "warnings": [msgspec.to_builtins(v) for v in outcome.warnings],
    }


class PolicyResult(msgspec.Struct, frozen=True):
    """What one policy said about one input."""

    deny: tuple[str, ...] = ()
    warn: tuple[str, ...] = ()


class CompiledPolicy:
    """A policy compiled once; `evaluate` runs its bundle against an input."""

    def __init__(self, policy: Policy) -> None:
        # regopy costs ~14 MB resident; only a service that compiles a policy pays for it.
        from regopy import Interpreter, RegoError

        self.policy = policy
        self.package = package_of(policy.source)
        self._interpreter = Interpreter()
        with _library_output_silenced():
            try:
                self._interpreter.add_module(policy.name, policy.source)
                self._bundle = self._interpreter.build(f"data.{self.package}")
            except RegoError as exc:
                raise _compile_error(policy.source, exc) from None

    def evaluate(self, document: Any) -> PolicyResult:
        self._interpreter.set_input(document)
        output = json.loads(str(self._interpreter.query_bundle(self._bundle)))
        values = (output.get("expressions") or [{}])[0]
        if not isinstance(values, dict):
            return PolicyResult()
        return PolicyResult(_messages(values.get("deny")), _messages(values.get("warn")))


def package_of(source: str) -> str:
    match = _PACKAGE.search(source)
    if match is None:
        raise InputError.for_field("source", "a policy starts with `package <name>`")
    return match.group(1)


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Validate and compile; an error names the source line and column with the compiler's message."""
    check_scope(policy.scope, "scope")
    if len(policy.source.encode()) > MAX_POLICY_BYTES:
        raise InputError.for_field("source", f"a policy is at most {MAX_POLICY_BYTES} bytes")
    return CompiledPolicy(policy)


def validate_policy_set(policy_set: PolicySet, policies: dict[str, Policy]) -> PolicySet:
    check_scope(policy_set.scope, "scope")
    if not policy_set.actions:
        raise InputError.for_field("actions", "attach the set to at least one action")
    validate_permissions(policy_set.actions, "actions")
    for index, policy_id in enumerate(policy_set.policy_ids):
        policy = policies.get(policy_id)
        if policy is None:
            raise InputError.for_field(f"policy_ids[{index}]", f"no policy {policy_id}")
        if policy.scope not in ancestors(policy_set.scope):
            raise InputError.for_field(
                f"policy_ids[{index}]", f"policy {policy_id} is at {policy.scope}, not at or above {policy_set.scope}"
            )
    return policy_set


class PolicyEngine:
    """A replica of the policies and policy sets, evaluating the sets that apply to an action at a scope."""

    def __init__(self) -> None:
        self._policies: dict[str, CompiledPolicy] = {}
        self._sets: dict[str, PolicySet] = {}

    def load(self, policies: Iterable[Policy], policy_sets: Iterable[PolicySet]) -> None:
        self._policies = {policy.id: CompiledPolicy(policy) for policy in policies}
        self._sets = {policy_set.id: policy_set for policy_set in policy_sets}

    def put_policy(self, policy: Policy) -> None:
        self._policies[policy.id] = CompiledPolicy(policy)

    def remove_policy(self, policy_id: str) -> None:
        self._policies.pop(policy_id, None)

    def put_policy_set(self, policy_set: PolicySet) -> None:
        self._sets[policy_set.id] = policy_set

    def remove_policy_set(self, policy_set_id: str) -> None:
        self._sets.pop(policy_set_id, None)

    def applicable(self, action: str, scope: str) -> list[PolicySet]:
        above = set(ancestors(scope))
        return [s for s in self._sets.values() if s.enabled and action in s.actions and s.scope in above]

    def evaluate(self, action: str, scope: str, document: Any) -> PolicyOutcome:
        denials: list[Violation] = []
        warnings: list[Violation] = []
        applicable = self.applicable(action, scope)
        for policy_set in applicable:
            for policy_id in policy_set.policy_ids:
                compiled = self._policies.get(policy_id)
                if compiled is None:
                    continue
                result = compiled.evaluate(document)
                # In a warn set, the policy's denials are only warnings.
                found = denials if policy_set.mode == "deny" else warnings
                found.extend(Violation(policy_id, policy_set.id, message) for message in result.deny)
                warnings.extend(Violation(policy_id, policy_set.id, message) for message in result.warn)
        return PolicyOutcome(tuple(denials), tuple(warnings), tuple(s.id for s in applicable))


def _messages(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(sorted(item if isinstance(item, str) else json.dumps(item) for item in value))


def _compile_error(source: str, exc: Exception) -> InputError:
    text = str(exc)
    message = _ERROR_MESSAGE.search(text)
    at = _ERROR_AT.search(text)
    detail = message.group(1) if message else "the policy does not compile"
    if at:
        offset = int(at.group(1))
        line = source.count("\n", 0, offset) + 1
        column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        detail = f"{detail} (line {line}, column {column})"
    return InputError(f"the policy does not compile: {detail}", errors=[FieldError("source", detail)])


@contextlib.contextmanager
def _library_output_silenced() -> Iterator[None]:
    """regopy's compiler prints its errors on standard output, which would corrupt our JSON log lines; the
    error also comes back in the exception, so the printout is dropped. Synchronous, so no other task runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
