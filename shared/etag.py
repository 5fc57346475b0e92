"""Optimistic concurrency: `If-Match` against a resource's current etag."""

from __future__ import annotations

from shared.errors import PreconditionFailedError


def check_if_match(if_match: str | None, current_etag: str) -> None:
    """Absent or `*` passes; otherwise one of the listed etags (weak or strong) must be current."""
    if if_match is None or if_match.strip() == "*":
        return
    candidates = {tag.strip().removeprefix("W/").strip('"') for tag in if_match.split(",")}
    if current_etag not in candidates:
        raise PreconditionFailedError(f'If-Match does not match the current etag "{current_etag}"')


def quoted(etag: str) -> str:
    return f'"{etag}"'
