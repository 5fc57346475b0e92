"""Secret references and the credentials built from them.

Configuration names a secret, never holds it: `env:NAME`, `file:/absolute/path` or `vault:<mount>/<path>#<key>`
(HashiCorp Vault KV version 2). The proxy resolves references for direct endpoints; a delegate agent resolves them
inside its own network, so a delegated endpoint's secret never crosses the bus. Values are cached briefly and never
logged; errors name the reference, not the value.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import aiohttp
import msgspec

HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$"


class Credential(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A header whose value comes from a secret: `{header: Authorization, prefix: "Bearer ", secret: env:TOKEN}`."""

    header: Annotated[str, msgspec.Meta(pattern=HEADER_NAME)]
    secret: str
    """Secret reference: `env:NAME`, `file:/path` or `vault:<mount>/<path>#<key>`."""
    prefix: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Text put before the secret, e.g. `Bearer `."""


@dataclass(frozen=True)
class SecretRef:
    source: Literal["env", "file", "vault"]
    location: str
    """The variable name, the file path, or the Vault `<mount>/<path>`."""
    key: str = ""
    """The field inside a Vault secret."""


class SecretError(Exception):
    """A reference is malformed or cannot be resolved; the message never contains a secret value."""


def parse_secret_ref(text: str) -> SecretRef:
    source, _, rest = text.partition(":")
    if source == "env" and rest and rest.replace("_", "").isalnum():
        return SecretRef("env", rest)
    if source == "file" and rest.startswith("/"):
        return SecretRef("file", rest)
    if source == "vault":
        location, _, key = rest.partition("#")
        mount, _, path = location.partition("/")
        if mount and path and key and ".." not in location.split("/"):
            return SecretRef("vault", location, key)
    raise SecretError(f"{text!r} is not a secret reference (env:NAME, file:/path or vault:<mount>/<path>#<key>)")


class VaultSettings(msgspec.Struct, frozen=True):
    address: str
    """Vault's base URL, e.g. `https://vault.internal:8200`."""
    token: str
    """A Vault token allowed to read the referenced KV v2 paths."""


class SecretResolver:
    """Resolves references, caching values for `ttl` seconds so Vault is not asked on every request."""

    def __init__(
        self, *, vault: VaultSettings | None = None, environ: Mapping[str, str] | None = None, ttl: float = 60.0
    ) -> None:
        self._vault = vault
        self._environ = os.environ if environ is None else environ
        self._ttl = ttl
        self._cache: dict[SecretRef, tuple[float, str]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def resolve(self, text: str) -> str:
        ref = parse_secret_ref(text)
        cached = self._cache.get(ref)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        value = await self._fetch(ref)
        if any(c in value for c in "\r\n\x00"):
            raise SecretError(f"the secret {text} contains line breaks or NUL and cannot be put in a header")
        self._cache[ref] = (time.monotonic() + self._ttl, value)
        return value

    async def headers(self, credentials: list[Credential]) -> list[tuple[str, str]]:
        """The credential headers with their secrets filled in."""
        return [(c.header, c.prefix + await self.resolve(c.secret)) for c in credentials]

    async def _fetch(self, ref: SecretRef) -> str:
        if ref.source == "env":
            value = self._environ.get(ref.location)
            if value is None:
                raise SecretError(f"environment variable {ref.location} is not set")
            return value
        if ref.source == "file":
            try:
                return (await asyncio.to_thread(Path(ref.location).read_text, encoding="utf-8")).strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretError(f"secret file {ref.location} cannot be read ({type(exc).__name__})") from None
        return await self._read_vault(ref)

    async def _read_vault(self, ref: SecretRef) -> str:
        """KV v2 read: `GET /v1/<mount>/data/<path>` answers `{"data": {"data": {<key>: <value>}}}`."""
        if self._vault is None:
            raise SecretError(f"vault:{ref.location} is referenced but no Vault is configured")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), trust_env=False)
        mount, _, path = ref.location.partition("/")
        url = f"{self._vault.address.rstrip('/')}/v1/{mount}/data/{path}"
        try:
            async with self._session.get(url, headers={"X-Vault-Token": self._vault.token}) as response:
                if response.status != 200:
                    raise SecretError(f"Vault answered {response.status} for {ref.location}")
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SecretError(f"Vault could not be read for {ref.location} ({type(exc).__name__})") from None
        value = (document.get("data") or {}).get("data", {}).get(ref.key) if isinstance(document, dict) else None
        if not isinstance(value, str):
            raise SecretError(f"Vault secret {ref.location} has no string field {ref.key}")
        return value
