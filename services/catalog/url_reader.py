"""Fetching `url:` location targets over HTTP(S) without letting a registered URL reach inside the network.

A URL location is a request the catalog makes on a user's behalf, so every address it connects to must be
public: loopback, private, link-local (cloud metadata at 169.254.169.254 included), multicast, reserved and
unspecified addresses are refused unless the operator allows the host or a CIDR (`IDP_URL_LOCATION_ALLOW`).
The check runs on the addresses DNS returned, in the resolver the connection then uses, so a name cannot
resolve to one address when checked and another when connected; IP literals are checked before the request,
and every redirect hop is a new request that goes through the same checks. Bodies are bounded in size and
each fetch in time.

`UrlFetcher` is the seam: `DirectFetcher` connects itself; `ProxiedFetcher` reads files on the repository hosts
the operator mapped to plugin-proxy endpoints (`IDP_REPOSITORY_HOSTS`, shared/repositories.py) through the proxy,
so a Git host inside a private network is reached by the proxy or its delegate agent, with the credentials the
endpoint holds, and never by the catalog itself; other URLs go to `DirectFetcher`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from shared.repositories import RepositoryProxy, RepositoryReadError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = ("http", "https")
_REDIRECTS = (301, 302, 303, 307, 308)
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.IGNORECASE)


class FetchError(Exception):
    """A URL that cannot be fetched: refused by the policy, unreachable, too large, too slow, or an error status."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class UrlPolicy:
    """Where URL locations may connect, and how much they may read."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IpNetwork, ...] = ()
    max_bytes: int = 4 * 1024 * 1024
    timeout_seconds: float = 10.0
    max_redirects: int = 5

    @classmethod
    def parse_allow(cls, allow: str, **limits: Any) -> UrlPolicy:
        """`allow` is a comma-separated list of host names and IP addresses or CIDRs; raises ValueError."""
        hosts, networks = set(), []
        for entry in filter(None, (e.strip() for e in allow.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not _HOST_NAME.match(entry):
                    raise ValueError(f"{entry!r} is neither a host name nor an IP address or CIDR") from None
                hosts.add(entry.lower())
        return cls(frozenset(hosts), tuple(networks), **limits)

    def allows_address(self, address: IpAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    def check_url(self, url: str) -> tuple[str, bool]:
        """The URL's host, and whether the policy allows it by name (its addresses then go unchecked)."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise FetchError(f"{url} is not an http(s) URL")
        host = parts.hostname.lower()
        if host in self.allowed_hosts:
            return host, True
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return host, False
        if not self.allows_address(literal):
            raise FetchError(f"{url} points at a non-public address ({literal}); see IDP_URL_LOCATION_ALLOW")
        return host, True


def raw_content_url(url: str) -> str:
    """Where the file a code host's web page shows is served as is: GitHub and GitLab `blob` pages, which is
    what Backstage locations usually name (its GitHub integration reads raw.githubusercontent.com the same way
    when it has no token). Other URLs are fetched as they are."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    if parts.hostname == "github.com" and len(segments) > 5 and segments[3] == "blob":
        owner, repo, ref, *path = segments[1], segments[2], *segments[4:]
        return urlunsplit(("https", "raw.githubusercontent.com", "/".join(["", owner, repo, ref, *path]), "", ""))
    if "/-/blob/" in parts.path:
        return urlunsplit(parts._replace(path=parts.path.replace("/-/blob/", "/-/raw/", 1), fragment=""))
    return url


class UrlFetcher(Protocol):
    async def fetch(self, url: str) -> bytes:
        """The body at `url` (redirects followed); raises FetchError."""
        ...

    async def close(self) -> None: ...


class _CheckedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses names with any address the policy does not allow."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower() in self._policy.allowed_hosts:
            return results
        refused = [r["host"] for r in results if not self._policy.allows_address(ipaddress.ip_address(r["host"]))]
        if refused:
            raise FetchError(f"{host} resolves to a non-public address ({refused[0]}); see IDP_URL_LOCATION_ALLOW")
        return results

    async def close(self) -> None:
        await self._inner.close()


class DirectFetcher:
    """Fetches from the target itself, through the checked resolver."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy

    async def close(self) -> None:
        pass  # each fetch has its own session

    async def fetch(self, url: str) -> bytes:
        connector = aiohttp.TCPConnector(resolver=_CheckedResolver(self.policy), use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_seconds)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                return await self._follow(session, raw_content_url(url))
        except TimeoutError:
            raise FetchError(f"{url} did not answer within {self.policy.timeout_seconds:g} s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"{url} could not be fetched: {exc}") from None

    async def _follow(self, session: aiohttp.ClientSession, url: str) -> bytes:
        for _ in range(self.policy.max_redirects + 1):
            self.policy.check_url(url)
            async with session.get(url, allow_redirects=False) as response:
                if response.status in _REDIRECTS and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status == 404:
                    raise FetchError(f"{url} was not found (404)", not_found=True)
                if response.status >= 400:
                    raise FetchError(f"{url} answered {response.status} {response.reason}")
                return await self._body(response, url)
        raise FetchError(f"{url} redirected more than {self.policy.max_redirects} times")

    async def _body(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        limit = self.policy.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise FetchError(f"{url} is larger than {limit} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise FetchError(f"{url} is larger than {limit} bytes")
        return bytes(body)


class ProxiedFetcher:
    """Files on the configured repository hosts through the plugin-proxy; every other URL through `direct`."""

    def __init__(self, repositories: RepositoryProxy, direct: UrlFetcher) -> None:
        self.repositories = repositories
        self.direct = direct

    async def close(self) -> None:
        await self.repositories.close()

    async def fetch(self, url: str) -> bytes:
        file = URL(url)
        if not self.repositories.serves(file):
            return await self.direct.fetch(url)
        try:
            return await self.repositories.read(file.parent, file.name)
        except RepositoryReadError as exc:
            raise FetchError(f"{url}: {exc}", not_found=exc.missing) from None


def blocking_fetch(fetcher: UrlFetcher, loop: asyncio.AbstractEventLoop):
    """A synchronous `fetch(url) -> bytes` for the location reader, which runs in a worker thread: each call
    runs `fetcher.fetch` on `loop` and waits for it."""

    def fetch(url: str) -> bytes:
        return asyncio.run_coroutine_threadsafe(fetcher.fetch(url), loop).result()

    return fetch
