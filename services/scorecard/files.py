"""Files of an entity's source for file rules: `file:` locations from configured directories, `url:` locations
through the plugin-proxy (a named endpoint per repository host, which holds the host's address and credentials).

The source is the entity's `backstage.io/source-location` (a directory), else the directory of its
`backstage.io/managed-by-location`. A missing file is `Unreadable(missing=True)`; a file that cannot be had
(too large, unreachable, timed out, refused) is `Unreadable` with the reason, so the rule is `unknown`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from yarl import URL

from services.scorecard.rules import FileSource, Unreadable
from shared.repositories import RepositoryProxy, RepositoryReadError

SOURCE_ANNOTATIONS = ("backstage.io/source-location", "backstage.io/managed-by-location")
MAX_FILE_BYTES = 1024 * 1024


def source_of(entity: dict[str, Any]) -> tuple[str, str] | Unreadable:
    """The entity's source as (location type, directory target ending in `/`)."""
    annotations = (entity.get("metadata") or {}).get("annotations") or {}
    for name in SOURCE_ANNOTATIONS:
        location = annotations.get(name)
        if not isinstance(location, str):
            continue
        kind, _, target = location.partition(":")
        # source-location names a directory; managed-by-location names the catalog file itself.
        if name == SOURCE_ANNOTATIONS[0] or target.endswith("/"):
            return kind, target if target.endswith("/") else target + "/"
        return kind, target.rpartition("/")[0] + "/"
    return Unreadable("the entity has no source location")


class LocalFiles:
    """Reads `<location directory>/<path>` for `file:` locations inside `roots`."""

    def __init__(self, roots: tuple[Path, ...], max_bytes: int = MAX_FILE_BYTES) -> None:
        self.roots = tuple(root.resolve() for root in roots)
        self.max_bytes = max_bytes

    async def read_at(self, directory: str, path: str) -> bytes | Unreadable:
        target = (Path(directory) / path).resolve()
        if not any(target.is_relative_to(root) for root in self.roots):
            return Unreadable(f"{path} is outside the allowed file roots")
        try:
            size = target.stat().st_size
            if not target.is_file():
                return Unreadable(f"{path} is not a file")
            if size > self.max_bytes:
                return Unreadable(f"{path} is larger than {self.max_bytes} bytes")
            return target.read_bytes()
        except FileNotFoundError:
            return Unreadable(f"{path} not found", missing=True)
        except OSError as exc:
            return Unreadable(f"{path} cannot be read: {exc.strerror}")


class ProxyFiles:
    """Reads files of `url:` locations on the configured hosts through the plugin-proxy (shared/repositories.py)."""

    def __init__(self, proxy: RepositoryProxy) -> None:
        self.proxy = proxy

    async def close(self) -> None:
        await self.proxy.close()

    async def read_at(self, directory: str, path: str) -> bytes | Unreadable:
        try:
            return await self.proxy.read(URL(directory), path)
        except RepositoryReadError as exc:
            return Unreadable(str(exc), missing=exc.missing)


class RepositoryFiles:
    """The `FileSource` of the service: each entity's source read by its location type."""

    def __init__(self, local: LocalFiles, remote: ProxyFiles | None) -> None:
        self.local = local
        self.remote = remote

    async def read(self, entity: dict[str, Any], path: str) -> bytes | Unreadable:
        source = source_of(entity)
        if isinstance(source, Unreadable):
            return source
        kind, directory = source
        if kind == "file":
            return await self.local.read_at(directory, path)
        if kind == "url" and self.remote is not None:
            return await self.remote.read_at(directory, path)
        if kind == "url":
            return Unreadable("url locations are not read: no plugin-proxy is configured (IDP_PROXY_URL)")
        return Unreadable(f"{kind} locations are not readable")

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()


async def read_files(
    source: FileSource, wanted: Iterable[tuple[str, dict[str, Any], Iterable[str]]], concurrency: int = 16
) -> dict[str, dict[str, bytes | Unreadable]]:
    """The files each entity's rules read, by uid then path: `wanted` is (uid, entity, paths); at most
    `concurrency` reads at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def one(entity: dict[str, Any], path: str) -> bytes | Unreadable:
        async with limit:
            return await source.read(entity, path)

    jobs = [(uid, path, one(entity, path)) for uid, entity, paths in wanted for path in sorted(set(paths))]
    contents = await asyncio.gather(*(job for _, _, job in jobs))
    files: dict[str, dict[str, bytes | Unreadable]] = {}
    for (uid, path, _), content in zip(jobs, contents, strict=True):
        files.setdefault(uid, {})[path] = content
    return files
