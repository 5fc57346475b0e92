"""Bounded in-process caches for reads, dropped whenever entities change: served entities (by their by-name key
and by uid, for by-name reads and the entities of `by-query` pages), which entities (and how many in all) a
`by-query` matches, in order, as far as its pages have been asked, and the value counts of `entity-facets`.

Every transaction that writes `entities` notifies `<schema>.entities_written` when it commits (migration 0030);
each replica listens on one connection and drops its caches on every notice. A write made through this
replica's own routes also drops them once the route has answered (`drop_after`), because the notice may reach the
listener after the writer's response: a client never reads its own write stale from the replica it wrote
through. Another replica serves the old version until the notice arrives (milliseconds). A read stores what it
fetched only if nothing was dropped since it began (`epoch`), so a read that raced a write cannot put the old
version back; and while the listening connection is down nothing is stored, since a notice could be missed.

By-name entries serve every caller: visibility is decided per request on the cached JSON (visibility.py). Result
and facet keys include the caller's visibility, which the query's SQL applied, so a page's entities are served by
uid as they are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from services.catalog.model import ServedEntity

log = logging.getLogger(__name__)
V = TypeVar("V")


class ReadCache(Generic[V]):
    """Values by key, weighing at most `capacity` in all: each weighs 1 unless `weigh` says otherwise. The oldest
    stored goes first."""

    def __init__(self, capacity: int, weigh: Callable[[V], int] | None = None) -> None:
        self.capacity = capacity
        self.listening = False
        """Whether write notices are being received: only then is anything stored."""
        self._weigh = weigh or (lambda _: 1)
        self._entries: dict[Hashable, V] = {}
        self._weight = 0
        self._epoch = 0
        self._loading: dict[tuple[int, Hashable], asyncio.Future[V]] = {}
        self._queued: dict[Hashable, dict[Hashable, asyncio.Future[V | None]]] = {}
        """Per group, the items waiting for `get_or_load_batched`'s next read."""
        self._reading: dict[Hashable, asyncio.Task[None]] = {}

    @property
    def epoch(self) -> int:
        """Taken before a read fetches, handed back to `put`: it changes whenever the cache is dropped."""
        return self._epoch

    def get(self, key: Hashable) -> V | None:
        return self._entries.get(key)

    def put(self, key: Hashable, value: V, epoch: int) -> None:
        weight = self._weigh(value)
        if not self.listening or epoch != self._epoch or weight > self.capacity:
            return
        if key in self._entries:
            self._weight -= self._weigh(self._entries.pop(key))
        while self._weight + weight > self.capacity:
            self._weight -= self._weigh(self._entries.pop(next(iter(self._entries))))
        self._entries[key] = value
        self._weight += weight

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        """The value for `key`, from the cache or else from `load()`, stored as `put` would. Requests that miss the
        same key while it loads wait for that one load instead of each running it: after a start or a write, many
        clients asking the same costly read (the facets of Backstage's catalog page) cost one query. A request that
        comes after a drop starts a load of its own, so it never gets what was read before the write. While write
        notices are not received, nothing is shared either: a write elsewhere could not separate the requests."""
        found = self._entries.get(key)
        if found is not None:
            return found
        if not self.listening:
            return await load()
        loading_key = (self._epoch, key)
        loading = self._loading.get(loading_key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, load, self._epoch))
            self._loading[loading_key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(loading_key, None))
        # Shielded: one waiter going away (its client disconnected) does not cancel the load the others wait for.
        return await asyncio.shield(loading)

    async def get_or_load_batched(
        self, group: tuple, items: list[Hashable], load_many: Callable[[list], Awaitable[dict[Hashable, V]]]
    ) -> list[V | None]:
        """The values for the keys `(*group, item)` of `items`, in their order: from the cache, or else read with
        others of the same `group`, `load_many(items)` returning the values found by item (a missing one is None,
        and not stored). While one read of a group runs, the group's misses queue, and the next read takes them
        all: after a start or a write, the misses of 50 clients cost a few queries instead of 50. Every request is
        answered by a read that began after it arrived, so none gets what was read before a write it follows; a
        first miss waits for nothing. Every call of a group passes an equivalent `load_many`: the one passed when no
        read was running serves the next reads too."""
        found = [self._entries.get((*group, item)) for item in items]
        missing = [item for item, value in zip(items, found, strict=True) if value is None]
        if not missing:
            return found
        queued = self._queued.setdefault(group, {})
        for item in missing:
            if item not in queued:
                queued[item] = asyncio.get_running_loop().create_future()
        waiting = [queued[item] for item in missing]
        if group not in self._reading:
            self._reading[group] = asyncio.ensure_future(self._read_queued(group, load_many))
        # Shielded: one waiter going away (its client disconnected) does not cancel what the others wait for.
        read = iter(await asyncio.shield(asyncio.gather(*waiting)))
        return [value if value is not None else next(read) for value in found]

    async def _read_queued(self, group: Hashable, load_many: Callable[[list], Awaitable[dict[Hashable, V]]]) -> None:
        try:
            while queued := self._queued.pop(group, None):
                epoch = self._epoch
                try:
                    found = await load_many(list(queued))
                except Exception as exc:
                    for waiting in queued.values():
                        waiting.set_exception(exc)
                        waiting.exception()  # retrieved here: a waiter that went away would log it again
                    continue
                except BaseException:  # cancelled (shutting down): the waiters must not wait forever
                    for waiting in queued.values():
                        waiting.cancel()
                    raise
                for item, waiting in queued.items():
                    value = found.get(item)
                    if value is not None:
                        self.put((*group, item), value, epoch)
                    waiting.set_result(value)
        finally:
            del self._reading[group]

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[V]], epoch: int) -> V:
        value = await load()
        self.put(key, value, epoch)
        return value

    def drop(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._weight = 0

    def __len__(self) -> int:
        return len(self._entries)


FacetCounts = dict[str, list[tuple[str, int]]]
"""Per facet key, each value (as written) and how many of the selected entities have it."""
FACET_VALUES = 100_000
"""Facet values (with their counts) a replica keeps in all, over every cached `entity-facets` answer: ~100 bytes
each. An answer counts its entities' search rows of each key (hundreds of milliseconds at 100,000 entities), and
Backstage's catalog page asks for several on every load."""

QueryResult = tuple[list, int]
"""What a `by-query` result holds: the uids of its first matches in order (all of them, or at least as many as the
pages asked so far reach), and the number of matches in all."""


@dataclass
class ReadCaches:
    """This replica's caches, listened for and dropped together."""

    entities: ReadCache[ServedEntity]
    results: ReadCache[QueryResult]
    """Keyed by everything a `by-query` asks but offset and limit: its pages are slices of one result."""
    facets: ReadCache[FacetCounts]
    """Keyed by the entities an `entity-facets` selects and its keys."""

    @classmethod
    def sized(cls, entities: int, result_uids: int, facet_values: int = FACET_VALUES) -> ReadCaches:
        return cls(
            ReadCache(entities),
            ReadCache(result_uids, weigh=lambda result: len(result[0]) + 1),
            ReadCache(facet_values, weigh=lambda counts: sum(map(len, counts.values())) + 1),
        )

    def _all(self) -> tuple[ReadCache, ...]:
        return (self.entities, self.results, self.facets)

    @property
    def listening(self) -> bool:
        return all(cache.listening for cache in self._all())

    @listening.setter
    def listening(self, value: bool) -> None:
        for cache in self._all():
            cache.listening = value

    def drop(self) -> None:
        for cache in self._all():
            cache.drop()


def drop_after(cache: ReadCache | ReadCaches, handler: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """`handler`, dropping the cache once it has run (answered or failed): whatever it committed is read fresh by
    the caller's next request."""

    async def dropping(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        finally:
            cache.drop()

    return dropping


async def listen_for_writes(pool: asyncpg.Pool, cache: ReadCaches, retry_seconds: float = 1.0) -> None:
    """Drops `cache` on every write notice, for as long as it runs; reconnects when the connection is lost (the
    cache is dropped and stores nothing until it listens again)."""
    while True:
        try:
            await _listen_until_lost(pool, cache)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("catalog read cache: not listening for writes (%s); retrying", exc)
        await asyncio.sleep(retry_seconds)


async def _listen_until_lost(pool: asyncpg.Pool, cache: ReadCaches) -> None:
    lost = asyncio.Event()

    def on_notice(*_: object) -> None:
        cache.drop()

    def on_lost(_: object) -> None:
        lost.set()

    async with pool.acquire() as conn:
        channel = await conn.fetchval("SELECT current_schema()") + ".entities_written"
        conn.add_termination_listener(on_lost)
        await conn.add_listener(channel, on_notice)
        try:
            cache.drop()  # whatever was written before the listener was in place
            cache.listening = True
            await lost.wait()
        finally:
            cache.listening = False
            cache.drop()
            if not conn.is_closed():
                conn.remove_termination_listener(on_lost)
                await conn.remove_listener(channel, on_notice)
