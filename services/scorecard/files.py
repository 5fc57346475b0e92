"""Files of an entity's source for file rules: `file:` locations from configured directories, `url:` locations
through the plugin-proxy (a named endpoint per repository host, which holds the host's address and credentials).

The source is the entity's `backstage.io/source-location` (a directory), else the directory of its
`backstage.io/managed-by-location`. A missing file is `Unreadable(missing=True)`; a file that cannot be had
(too large, unreachable, timed out, refused) is `Unreadable` with the reason, so the rule is `unknown`.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from services.scorecard.rules import FileSource, Unreadable
from shared.errors import PayloadTooLargeError, ProblemError
from shared.proxy_client import ProxyClient
from shared.secretref import SecretError, SecretResolver

SOURCE_ANNOTATIONS = ("backstage.io/source-location", "backstage.io/managed-by-location")
MAX_FILE_BYTES = 1024 * 1024
DEFAULT_RAW_PATH = "/{owner}/{repo}/{ref}/{path}"
"""GitHub's raw layout (`raw.githubusercontent.com`); Gitea's is `/{owner}/{repo}/raw/branch/{ref}/{path}`,
GitLab's `/{owner}/{repo}/-/raw/{ref}/{path}`."""
DEFAULT_REF = "HEAD"
_TREE_MARKERS = ("tree", "blob", "raw", "src/branch", "src/commit", "src/tag", "-/tree", "-/blob", "-/raw")
"""What separates `owner/repo` from the ref in repository browser URLs (GitHub, Gitea, GitLab)."""
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_HOST_ENTRY = re.compile(r"^([A-Za-z0-9.-]+(?::\d{1,5})?)=([a-z0-9][a-z0-9-]{0,62})(/\S*)?$")


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


@dataclass(frozen=True)
class RepositoryHost:
    """Where the files of repositories on `host` are read: proxy endpoint `endpoint`, at `raw_path`."""

    host: str
    """Host name, with `:port` when the source URLs name one."""
    endpoint: str
    raw_path: str = DEFAULT_RAW_PATH
    """The file's path under the endpoint, from `{owner}`, `{repo}`, `{ref}` and `{path}`."""


def parse_repository_hosts(text: str) -> dict[str, RepositoryHost]:
    """`host=endpoint[/raw path template]` entries separated by spaces or commas, e.g.
    `github.com=github-raw git.example.com=gitea/{owner}/{repo}/raw/branch/{ref}/{path}`."""
    hosts: dict[str, RepositoryHost] = {}
    for entry in re.split(r"[\s,]+", text.strip()):
        if not entry:
            continue
        match = _HOST_ENTRY.match(entry)
        if not match:
            raise ValueError(f"{entry!r} is not host=endpoint[/raw path with {{owner}} {{repo}} {{ref}} {{path}}]")
        host, endpoint, raw_path = match.groups()
        raw_path = raw_path or DEFAULT_RAW_PATH
        unknown = set(_PLACEHOLDER.findall(raw_path)) - {"owner", "repo", "ref", "path"}
        if unknown or "{path}" not in raw_path:
            raise ValueError(f"{entry!r}: the raw path needs {{path}} and knows only {{owner}} {{repo}} {{ref}}")
        hosts[host.lower()] = RepositoryHost(host.lower(), endpoint, raw_path)
    return hosts


def raw_path_of(host: RepositoryHost, source: URL, path: str) -> str | Unreadable:
    """The endpoint path of `path` in the repository directory `source` (a browser URL such as
    `https://github.com/acme/billing/tree/main/services/api/`)."""
    segments = [s for s in source.path.split("/") if s]
    if len(segments) < 2:
        return Unreadable(f"{source} names no owner/repository")
    owner, repo, rest = segments[0], segments[1].removesuffix(".git"), segments[2:]
    ref, directory = DEFAULT_REF, []
    if rest:
        marker = next((m for m in _TREE_MARKERS if rest[: m.count("/") + 1] == m.split("/")), None)
        after = rest[marker.count("/") + 1 :] if marker else []
        if not after:
            return Unreadable(f"{source}: no branch or commit after {owner}/{repo}")
        ref, directory = after[0], after[1:]
    full = posixpath.normpath("/".join([*directory, path]))
    if full.startswith("..") or any(s in (".", "..") for s in full.split("/")):
        return Unreadable(f"{path} is outside the repository")
    values = {"owner": owner, "repo": repo, "ref": ref, "path": full}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], host.raw_path)


class ProxyFiles:
    """Reads files of `url:` locations on the configured hosts through the plugin-proxy, as the scorecard's own
    service account (`token` is a secret reference to its API key)."""

    def __init__(
        self,
        hosts: Mapping[str, RepositoryHost],
        proxy_url: str,
        token: str,
        *,
        secrets: SecretResolver,
        max_bytes: int = MAX_FILE_BYTES,
        timeout: float = 10.0,
    ) -> None:
        self.hosts = hosts
        self.max_bytes = max_bytes
        self._timeout = timeout
        self._token_ref = token
        self._token = ""
        self._secrets = secrets
        self._client = ProxyClient(proxy_url, lambda: self._token, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()

    async def read_at(self, directory: str, path: str) -> bytes | Unreadable:
        source = URL(directory)
        authority = f"{source.host}:{source.explicit_port}" if source.explicit_port else str(source.host)
        host = self.hosts.get(authority.lower())
        if host is None:
            return Unreadable(f"no repository host is configured for {authority} (IDP_REPOSITORY_HOSTS)")
        raw_path = raw_path_of(host, source, path)
        if isinstance(raw_path, Unreadable):
            return raw_path
        try:
            self._token = await self._secrets.resolve(self._token_ref)
            response = await self._client.fetch(host.endpoint, raw_path, max_bytes=self.max_bytes)
        except PayloadTooLargeError:
            return Unreadable(f"{path} is larger than {self.max_bytes} bytes")
        except TimeoutError:
            return Unreadable(f"{path}: {authority} did not answer within {self._timeout:g}s")
        except ProblemError as exc:  # the proxy's own answer: unknown endpoint, forbidden, upstream timeout …
            return Unreadable(f"{path}: the plugin-proxy answered {exc.status}: {exc.detail}")
        except SecretError as exc:
            return Unreadable(f"the scorecard's proxy credentials are unavailable: {exc}")
        except aiohttp.ClientError as exc:
            return Unreadable(f"{path}: the plugin-proxy cannot be reached ({type(exc).__name__})")
        if response.status == 404:
            return Unreadable(f"{path} not found", missing=True)
        if response.status != 200:
            return Unreadable(f"{path}: {authority} answered {response.status}")
        return response.body


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
