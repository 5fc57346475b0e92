"""Files of Git repositories on private hosts, read through named plugin-proxy endpoints.

The scorecard's file checks and the catalog's `url:` locations name files by the URLs people paste from a code
host's web pages (`https://git.example.com/acme/billing/blob/main/catalog-info.yaml`). The operator maps each
host to a proxy endpoint and to where that host serves raw files (`IDP_REPOSITORY_HOSTS`); the endpoint holds
the host's address and credentials, and a delegate agent may reach it inside a private network. The caller
authenticates to the proxy as its own service account (`IDP_PROXY_URL`, `IDP_PROXY_TOKEN`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from shared.config import BaseSettings
from shared.errors import PayloadTooLargeError, ProblemError
from shared.proxy_client import ProxyClient
from shared.secretref import SecretError, SecretResolver, parse_secret_ref

DEFAULT_RAW_PATH = "/{owner}/{repo}/{ref}/{path}"
"""GitHub's raw layout (`raw.githubusercontent.com`); Gitea's is `/{owner}/{repo}/raw/branch/{ref}/{path}`,
GitLab's `/{owner}/{repo}/-/raw/{ref}/{path}`."""
DEFAULT_REF = "HEAD"
_TREE_MARKERS = ("tree", "blob", "raw", "src/branch", "src/commit", "src/tag", "-/tree", "-/blob", "-/raw")
"""What separates `owner/repo` from the ref in repository browser URLs (GitHub, Gitea, GitLab)."""
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_HOST_ENTRY = re.compile(r"^([A-Za-z0-9.-]+(?::\d{1,5})?)=([a-z0-9][a-z0-9-]{0,62})(/\S*)?$")


class RepositoryReadError(Exception):
    """A file that cannot be had: no host configured, not found (`missing`), too large, too slow, refused."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


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


class RepositorySettings(BaseSettings, kw_only=True, forbid_unknown_fields=True):
    """Settings of a service that reads repository files through the plugin-proxy as its own service account."""

    proxy_url: str | None = None
    """The plugin-proxy's base URL, through which repository files are read (`IDP_PROXY_URL`)."""
    proxy_token: str | None = None
    """Secret reference (`env:NAME` or `file:/path`) to the API key of the service account this service calls the
    proxy as (`IDP_PROXY_TOKEN`); it needs `proxy_endpoint_use` on the repository endpoints."""
    repository_hosts: str = ""
    """Which proxy endpoint serves each repository host's files, and at which path (`IDP_REPOSITORY_HOSTS`):
    `host=endpoint[/raw path]` entries separated by spaces, the raw path built from `{owner}`, `{repo}`, `{ref}`
    and `{path}` (default GitHub's `/{owner}/{repo}/{ref}/{path}`)."""

    def __post_init__(self) -> None:
        """Refuses, naming the variable at fault, settings the service cannot read repositories with."""
        super().__post_init__()
        parse_repository_hosts(self.repository_hosts)
        if self.proxy_token is not None:
            try:
                parse_secret_ref(self.proxy_token)
            except SecretError as exc:
                raise ValueError(f"IDP_PROXY_TOKEN: {exc}") from None
        if self.repository_hosts and not (self.proxy_url and self.proxy_token):
            raise ValueError("IDP_REPOSITORY_HOSTS needs IDP_PROXY_URL and IDP_PROXY_TOKEN")

    def repository_proxy(self, secrets: SecretResolver, *, max_bytes: int, timeout: float) -> RepositoryProxy | None:
        """The reader these settings describe; None without a proxy URL and token."""
        if not (self.proxy_url and self.proxy_token):
            return None
        hosts = parse_repository_hosts(self.repository_hosts)
        return RepositoryProxy(
            hosts, self.proxy_url, self.proxy_token, secrets=secrets, max_bytes=max_bytes, timeout=timeout
        )


def raw_path_of(host: RepositoryHost, source: URL, path: str) -> str:
    """The endpoint path of `path` in the repository directory `source` (a browser URL such as
    `https://github.com/acme/billing/tree/main/services/api/`); RepositoryReadError when it names no repository."""
    segments = [s for s in source.path.split("/") if s]
    if len(segments) < 2:
        raise RepositoryReadError(f"{source} names no owner/repository")
    owner, repo, rest = segments[0], segments[1].removesuffix(".git"), segments[2:]
    ref, directory = DEFAULT_REF, []
    if rest:
        marker = next((m for m in _TREE_MARKERS if rest[: m.count("/") + 1] == m.split("/")), None)
        after = rest[marker.count("/") + 1 :] if marker else []
        if not after:
            raise RepositoryReadError(f"{source}: no branch or commit after {owner}/{repo}")
        ref, directory = after[0], after[1:]
    full = posixpath.normpath("/".join([*directory, path]))
    if full.startswith("..") or any(s in (".", "..") for s in full.split("/")):
        raise RepositoryReadError(f"{path} is outside the repository")
    values = {"owner": owner, "repo": repo, "ref": ref, "path": full}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], host.raw_path)


def authority_of(url: URL) -> str:
    """`host[:port]` as repository hosts are keyed."""
    return (f"{url.host}:{url.explicit_port}" if url.explicit_port else str(url.host)).lower()


class RepositoryProxy:
    """Reads files of repositories on the configured hosts through the plugin-proxy, as the calling service's own
    service account (`token` is a secret reference to its API key, resolved at each read so a rotated key is used)."""

    def __init__(
        self,
        hosts: Mapping[str, RepositoryHost],
        proxy_url: str,
        token: str,
        *,
        secrets: SecretResolver,
        max_bytes: int,
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

    def serves(self, url: URL) -> bool:
        return authority_of(url) in self.hosts

    async def read(self, directory: URL, path: str) -> bytes:
        """The file `path` of the repository directory `directory`; raises RepositoryReadError."""
        authority = authority_of(directory)
        host = self.hosts.get(authority)
        if host is None:
            raise RepositoryReadError(f"no repository host is configured for {authority} (IDP_REPOSITORY_HOSTS)")
        raw_path = raw_path_of(host, directory, path)
        try:
            self._token = await self._secrets.resolve(self._token_ref)
            response = await self._client.fetch(host.endpoint, raw_path, max_bytes=self.max_bytes)
        except PayloadTooLargeError:
            raise RepositoryReadError(f"{path} is larger than {self.max_bytes} bytes") from None
        except TimeoutError:
            raise RepositoryReadError(f"{path}: {authority} did not answer within {self._timeout:g}s") from None
        except ProblemError as exc:  # the proxy's own answer: unknown endpoint, forbidden, upstream timeout …
            raise RepositoryReadError(f"{path}: the plugin-proxy answered {exc.status}: {exc.detail}") from None
        except SecretError as exc:
            raise RepositoryReadError(f"the proxy credentials (IDP_PROXY_TOKEN) are unavailable: {exc}") from None
        except aiohttp.ClientError as exc:
            raise RepositoryReadError(f"{path}: the plugin-proxy cannot be reached ({type(exc).__name__})") from None
        if response.status == 404:
            raise RepositoryReadError(f"{path} not found", missing=True)
        if response.status != 200:
            raise RepositoryReadError(f"{path}: {authority} answered {response.status}")
        return response.body
