"""Outbound HTTP to addresses named by configuration (proxy endpoints, delegate agents), guarded against SSRF.

An `AddressPolicy` says which hosts and networks may be reached. `GuardedResolver` applies it to every DNS answer
before aiohttp connects, so the connection goes to an address that was checked: there is no second lookup that a
hostile DNS server could answer differently. Literal IPs, which aiohttp never passes to a resolver, are checked by
`AddressPolicy.check_url`. Redirects are never followed here; the caller decides what a 3xx means.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection (RFC 9110 §7.6.1) and never cross a proxy."""


class EgressDeniedError(Exception):
    """The destination is not allowed by the policy; the message names the host, never a credential."""


@dataclass(frozen=True)
class AddressPolicy:
    """Where outbound requests may go.

    With `allow_public`, every globally routable address is allowed (the proxy's direct mode); loopback,
    link-local (cloud metadata at 169.254.169.254), private, shared (100.64/10) and reserved ranges are denied
    unless listed in `allowed_networks`. Without it (a delegate agent), only `allowed_networks` and the hosts in
    `allowed_hosts` (exact names or `*.suffix`) are reachable. Unspecified and multicast addresses never are.
    """

    allow_public: bool = True
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, allow_public: bool) -> AddressPolicy:
        """Build from CIDRs (`10.0.0.0/8`, `127.0.0.2`) and host names (`git.internal`, `*.corp.example`)."""
        networks, hosts = [], []
        for entry in entries:
            entry = entry.strip()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not _valid_host_pattern(entry):
                    raise ValueError(f"{entry!r} is neither a CIDR nor a host name") from None
                hosts.append(entry.lower())
        return cls(allow_public, tuple(networks), tuple(hosts))

    def fingerprint(self) -> str:
        """A stable hash of the policy, reported by agents so operators can compare replicas."""
        entries = sorted([str(n) for n in self.allowed_networks] + list(self.allowed_hosts))
        text = f"public={self.allow_public};" + ",".join(entries)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in self.allowed_hosts)

    def address_allowed(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_unspecified or address.is_multicast:
            return False
        if any(address in network for network in self.allowed_networks):
            return True
        return self.allow_public and address.is_global

    def check_url(self, url: URL) -> None:
        """Scheme and literal-IP checks that need no DNS; names are checked again once resolved."""
        if url.scheme not in ("http", "https") or not url.host:
            raise EgressDeniedError("only absolute http(s) URLs may be requested")
        try:
            address = ipaddress.ip_address(url.host)
        except ValueError:
            return
        if not self.address_allowed(address):
            raise EgressDeniedError(f"address {url.host} is not allowed")


def _valid_host_pattern(entry: str) -> bool:
    name = entry.removeprefix("*.")
    labels = name.split(".")
    return bool(name) and all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels)


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then keeps only the addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        if self.policy.host_allowed(host):
            return results
        allowed = [r for r in results if self.policy.address_allowed(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise EgressDeniedError(f"{host} resolves only to addresses that are not allowed")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


async def _refuse_redirect(*_: object) -> None:
    raise EgressDeniedError("redirects are not followed")


def client_session(policy: AddressPolicy, *, connections: int = 100) -> aiohttp.ClientSession:
    """A pooled session that reaches only what `policy` allows, passes bodies through undecoded, keeps no cookies
    and follows no redirect (aiohttp's WebSocket handshake would follow one, perhaps to a literal address that no
    resolver sees)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy), limit=connections, ttl_dns_cache=10)
    no_redirects = aiohttp.TraceConfig()
    no_redirects.on_request_redirect.append(_refuse_redirect)
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[no_redirects],
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
    )


class SessionPool:
    """One pooled session per distinct policy, so a connection opened under a lenient policy is never reused by a
    request under a stricter one."""

    def __init__(self, connections: int = 100) -> None:
        self._sessions: dict[AddressPolicy, aiohttp.ClientSession] = {}
        self._connections = connections

    def session(self, policy: AddressPolicy) -> aiohttp.ClientSession:
        session = self._sessions.get(policy)
        if session is None:
            session = self._sessions[policy] = client_session(policy, connections=self._connections)
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


async def send(
    session: aiohttp.ClientSession,
    policy: AddressPolicy,
    method: str,
    url: URL,
    headers: list[tuple[str, str]],
    body: AsyncIterable[bytes] | None,
    timeout: float,
) -> aiohttp.ClientResponse:
    """Send one request without following redirects; `timeout` bounds connecting and each read.

    Raises `EgressDeniedError` for a forbidden destination, `TimeoutError` when the upstream is too slow and
    `aiohttp.ClientError` when it cannot be reached.
    """
    policy.check_url(url)
    return await session.request(
        method,
        url,
        headers=headers,
        data=body,
        allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout),
    )


async def connect_websocket(
    session: aiohttp.ClientSession,
    policy: AddressPolicy,
    url: URL,
    headers: list[tuple[str, str]],
    protocols: list[str],
    timeout: float,
    max_message_bytes: int,
) -> aiohttp.ClientWebSocketResponse:
    """Open a WebSocket to `url` (http or https) under the same rules as `send`; `timeout` bounds the handshake and
    the closing handshake, not the time between messages.

    Raises `EgressDeniedError`, `TimeoutError`, `aiohttp.WSServerHandshakeError` when the upstream answers
    anything but 101, and `aiohttp.ClientError`.
    """
    policy.check_url(url)
    async with asyncio.timeout(timeout):
        return await session.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=timeout),
            max_msg_size=max_message_bytes,
        )
