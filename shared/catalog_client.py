"""The catalog's request/reply interface (`idp.rpc.catalog.<method>`): wire structs and typed calls.

Other services read entities through these instead of the catalog's tables (design.md §1). Entities come
stitched as the catalog serves them: document, uid/etag/generation, the scope annotation and relations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import msgspec
from nats.aio.client import Client as NatsClient

from shared.bus import request_rpc

SERVICE = "catalog"
MAX_PAGE = 1000
CHUNK = 100
"""Entities asked per `entities` request: the reply (not trimmed) must fit NATS's 1 MB message limit."""


class EntitiesRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Entities by uid (any scope) and/or by ref at `scope`."""

    uids: Annotated[list[str], msgspec.Meta(max_length=MAX_PAGE)] = []
    refs: Annotated[list[str], msgspec.Meta(max_length=MAX_PAGE)] = []
    scope: str = "account"


class EntitiesReply(msgspec.Struct, frozen=True):
    """The entities found, uids first then refs, each once; missing ones are left out."""

    items: list[dict[str, Any]]


class EntityPageRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A page of every entity of every scope in uid order, after the uid `after`."""

    after: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = 500


class EntityPageReply(msgspec.Struct, frozen=True):
    items: list[dict[str, Any]]
    next: str | None
    """The `after` of the next page; None after the last one."""


async def get_entities(
    nc: NatsClient,
    uids: Sequence[str] = (),
    refs: Sequence[str] = (),
    scope: str = "account",
    timeout: float = 10.0,
    chunk: int = CHUNK,
) -> list[dict[str, Any]]:
    """Entities by uid and ref, asked `chunk` at a time so that each reply fits in one message."""
    found: list[dict[str, Any]] = []
    uids, refs = list(uids), list(refs)
    for start in range(0, max(len(uids), len(refs)), chunk):
        request = EntitiesRequest(uids=uids[start : start + chunk], refs=refs[start : start + chunk], scope=scope)
        reply = await request_rpc(nc, SERVICE, "entities", request, EntitiesReply, timeout=timeout)
        found += reply.items
    return found


async def iterate_pages(nc: NatsClient, limit: int = 500, timeout: float = 30.0) -> AsyncIterator[list[dict[str, Any]]]:
    """Every entity of the catalog, page by page."""
    after: str | None = None
    while True:
        reply = await request_rpc(
            nc, SERVICE, "page", EntityPageRequest(after=after, limit=limit), EntityPageReply, timeout=timeout
        )
        if reply.items:
            yield reply.items
        if reply.next is None:
            return
        after = reply.next
