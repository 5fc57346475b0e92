"""Proxy endpoints, delegate agents and the rules of a forwarded request: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import urllib.parse
from typing import Annotated, Literal

import msgspec
from yarl import URL

from shared.delegate_wire import AGENT_ID, Tag
from shared.egress import HOP_BY_HOP, AddressPolicy
from shared.errors import FieldError, InputError
from shared.secretref import Credential, SecretError, parse_secret_ref

ENDPOINT_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
RESERVED_NAMES = frozenset({"endpoints", "agents"})
"""Names of the management routes under `/api/proxy/`, which no endpoint may take."""
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")]

DEFAULT_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-encoding",
        "content-type",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "range",
        "user-agent",
    }
)
DEFAULT_RESPONSE_HEADERS = frozenset(
    {
        "accept-ranges",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-length",
        "content-range",
        "content-type",
        "etag",
        "expires",
        "last-modified",
        "location",
        "retry-after",
        "vary",
    }
)
NEVER_FORWARDED = frozenset({"authorization", "cookie", "host", "content-length", "forwarded"}) | HOP_BY_HOP
"""Request headers the caller can never pass on: its own credentials, and what the proxy sets itself."""
NEVER_RETURNED = frozenset({"set-cookie"}) | HOP_BY_HOP


class PathRewrite(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Backstage's `pathRewrite`: the first match of `pattern` in the forwarded path is replaced."""

    pattern: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    replacement: Annotated[str, msgspec.Meta(max_length=256)] = ""


class DelegateSelector(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tags: Annotated[list[Tag], msgspec.Meta(min_length=1, max_length=16)]
    """An agent qualifies when it has every one of these tags."""


class EndpointSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an endpoint does; everything but its name. Holds secret references, never secret values."""

    target: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    """Absolute http(s) URL the forwarded path is appended to."""
    methods: Annotated[list[Method], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["GET", "HEAD"]
    )
    request_headers: list[HeaderName] = []
    """Request headers forwarded besides the safe defaults (Accept, Content-Type, conditionals, Range …)."""
    response_headers: list[HeaderName] = []
    """Response headers returned besides the safe defaults (Content-Type, ETag, Cache-Control …)."""
    path_rewrite: Annotated[list[PathRewrite], msgspec.Meta(max_length=16)] = []
    credentials: Annotated[list[Credential], msgspec.Meta(max_length=8)] = []
    """Headers injected from secret references (resolved by the proxy, or by the agent when delegated)."""
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    """Bounds connecting and each wait for upstream data."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0, le=10 * 1024**3)] = 10 * 1024 * 1024
    """Largest request body forwarded; also the largest WebSocket message either way."""
    websocket: bool = False
    """Accept WebSocket upgrades (`GET` with `Upgrade: websocket`) and carry the messages both ways."""
    delegate: DelegateSelector | None = None
    """Send through a delegate agent with these tags; absent means the proxy connects directly."""
    allow_networks: Annotated[list[str], msgspec.Meta(max_length=32)] = []
    """Direct mode only: CIDRs reachable despite the SSRF rules (loopback, private, link-local …)."""
    description: Annotated[str, msgspec.Meta(max_length=1024)] = ""


class EndpointCreate(EndpointSpec, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=ENDPOINT_NAME)]


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A stored endpoint. `version` is its ETag; `origin` says whether the API or the start-up file wrote it."""

    name: str
    spec: EndpointSpec
    origin: Literal["api", "file"]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class EndpointView(EndpointSpec, frozen=True, kw_only=True):
    name: str
    origin: Literal["api", "file"]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class EndpointPage(msgspec.Struct, frozen=True):
    items: list[EndpointView]
    nextCursor: str | None = None


class PageQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100
    cursor: str | None = None
    """The last name of the previous page (`nextCursor`)."""


class EndpointsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The start-up file (`IDP_ENDPOINTS_FILE`): `endpoints: [{name, target, …}]`."""

    endpoints: list[EndpointCreate] = []


def view(endpoint: Endpoint) -> EndpointView:
    return EndpointView(
        **msgspec.structs.asdict(endpoint.spec),
        name=endpoint.name,
        origin=endpoint.origin,
        version=endpoint.version,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def spec_of(create: EndpointCreate) -> EndpointSpec:
    fields = msgspec.structs.asdict(create)
    del fields["name"]
    return EndpointSpec(**fields)


def check_name(name: str) -> str:
    if not re.match(ENDPOINT_NAME, name) or name in RESERVED_NAMES:
        raise InputError.for_field("name", f"{name!r} is not an endpoint name (lower-case letters, digits, '-')")
    return name


def check_spec(spec: EndpointSpec, prefix: str = "$") -> EndpointSpec:
    """Rules msgspec's types cannot express; raises one InputError listing every field at fault."""
    errors: list[FieldError] = []
    try:
        target = URL(spec.target)
        usable = target.scheme in ("http", "https") and target.host and not (target.query_string or target.fragment)
    except ValueError:
        usable = False
    if not usable:
        errors.append(FieldError(f"{prefix}.target", "must be an absolute http(s) URL without query or fragment"))
    for i, rewrite in enumerate(spec.path_rewrite):
        try:
            re.compile(rewrite.pattern)
        except re.error as exc:
            errors.append(FieldError(f"{prefix}.path_rewrite[{i}].pattern", f"not a regular expression: {exc}"))
    for i, credential in enumerate(spec.credentials):
        try:
            parse_secret_ref(credential.secret)
        except SecretError as exc:
            errors.append(FieldError(f"{prefix}.credentials[{i}].secret", str(exc)))
    for i, header in enumerate(spec.request_headers):
        if header.lower() in NEVER_FORWARDED:
            errors.append(FieldError(f"{prefix}.request_headers[{i}]", f"{header} is never forwarded"))
    for i, network in enumerate(spec.allow_networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            errors.append(FieldError(f"{prefix}.allow_networks[{i}]", f"{network!r} is not a CIDR"))
    if spec.websocket and "GET" not in spec.methods:
        errors.append(FieldError(f"{prefix}.methods", "must include GET, the WebSocket handshake's method"))
    if spec.delegate is not None and spec.allow_networks:
        errors.append(FieldError(f"{prefix}.allow_networks", "applies to direct endpoints; agents keep their own"))
    if errors:
        raise InputError("invalid endpoint: " + "; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)
    return spec


def direct_policy(spec: EndpointSpec) -> AddressPolicy:
    networks = tuple(sorted({ipaddress.ip_network(n, strict=False) for n in spec.allow_networks}, key=str))
    return AddressPolicy(allow_public=True, allowed_networks=networks)


# --- a forwarded request -------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def forwarded_path(raw_tail: str) -> str:
    """The path after `/api/proxy/<name>`, still percent-encoded, checked for traversal and control characters.

    Each segment is decoded until it stops changing (so `%252e%252e` counts as `..`); `.`/`..` segments, encoded
    slashes or backslashes and control characters (CR/LF injection) are refused.
    """
    if not raw_tail:
        return "/"
    if not raw_tail.startswith("/"):
        raise InputError.for_field("path", "must start with /")
    for segment in raw_tail.split("/")[1:]:
        decoded = segment
        for _ in range(4):
            once = urllib.parse.unquote(decoded)
            if once == decoded:
                break
            decoded = once
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded or _CONTROL.search(decoded):
            raise InputError.for_field("path", "path segments may not be '.', '..', contain slashes or control bytes")
    return raw_tail


def upstream_url(spec: EndpointSpec, tail: str, raw_query: str) -> URL:
    """Target URL for a checked, still-encoded tail: rewrites applied, joined under the target's path."""
    for rewrite in spec.path_rewrite:
        tail = re.sub(rewrite.pattern, rewrite.replacement, tail, count=1)
    if not tail.startswith("/"):
        tail = "/" + tail
    target = URL(spec.target)
    base = target.raw_path.rstrip("/")
    return URL.build(
        scheme=target.scheme,
        authority=target.raw_authority,
        path=base + tail,
        query_string=raw_query,
        encoded=True,
    )


def request_headers(
    spec: EndpointSpec, incoming: list[tuple[str, str]], *, client: str, host: str, scheme: str, prefix: str
) -> list[tuple[str, str]]:
    """The caller's headers the endpoint allows, minus credentials and hop-by-hop ones, plus `X-Forwarded-*`."""
    allowed = DEFAULT_REQUEST_HEADERS | {h.lower() for h in spec.request_headers}
    connection_named = {
        token.strip().lower() for name, value in incoming if name.lower() == "connection" for token in value.split(",")
    }
    headers = [
        (name, value)
        for name, value in incoming
        if (lower := name.lower()) in allowed and lower not in NEVER_FORWARDED and lower not in connection_named
    ]
    prior = ", ".join(v for n, v in incoming if n.lower() == "x-forwarded-for" and "x-forwarded-for" in allowed)
    headers += [
        ("X-Forwarded-For", f"{prior}, {client}" if prior else client),
        ("X-Forwarded-Host", host),
        ("X-Forwarded-Proto", scheme),
        ("X-Forwarded-Prefix", prefix),
    ]
    return headers


def response_headers(
    spec: EndpointSpec, upstream: list[tuple[str, str]], *, public_prefix: str
) -> list[tuple[str, str]]:
    """The upstream's headers the endpoint allows; a `Location` under the target is mapped back under the proxy,
    any other `Location` dropped so an internal address never reaches the caller."""
    allowed = DEFAULT_RESPONSE_HEADERS | {h.lower() for h in spec.response_headers}
    headers = []
    for name, value in upstream:
        lower = name.lower()
        if lower not in allowed or lower in NEVER_RETURNED:
            continue
        if lower == "location":
            mapped = public_location(spec, value, public_prefix)
            if mapped is None:
                continue
            value = mapped
        headers.append((name, value))
    return headers


def public_location(spec: EndpointSpec, location: str, public_prefix: str) -> str | None:
    target = URL(spec.target)
    try:
        resolved = target.join(URL(location))
    except ValueError:
        return None
    base = target.raw_path.rstrip("/")
    inside = resolved.raw_path == base or resolved.raw_path.startswith(base + "/")
    if resolved.origin() != target.origin() or not inside:
        return None
    tail = resolved.raw_path[len(base) :] or "/"
    return public_prefix + tail + (f"?{resolved.raw_query_string}" if resolved.raw_query_string else "")


# --- agents --------------------------------------------------------------------------------------------


class AgentCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=AGENT_ID)]
    description: Annotated[str, msgspec.Meta(max_length=1024)] = ""


class AgentInstance(msgspec.Struct, frozen=True):
    """One running replica of an agent."""

    instance: str
    version: str
    tags: list[str]
    allowlist_hash: str
    connected_at: dt.datetime
    last_heartbeat: dt.datetime


class AgentView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    description: str
    status: Literal["pending", "online", "offline", "revoked"]
    """`pending`: never connected; `online`: a replica heartbeat is recent; `revoked`: its token no longer works."""
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    last_heartbeat: dt.datetime | None = None
    version: str | None = None
    """Version of the replica that heartbeat last."""
    tags: list[str] = []
    instances: list[AgentInstance] = []
    """Replicas heard from within the offline threshold."""


class AgentList(msgspec.Struct, frozen=True):
    items: list[AgentView]


class MintedAgent(msgspec.Struct, frozen=True):
    agent: AgentView
    token: str
    """Shown once; only its hash is stored."""


class LiveAgent(msgspec.Struct, frozen=True):
    """What the forwarding path knows of an agent: enough to pick one for an endpoint."""

    id: str
    tags: frozenset[str]


def agent_status(
    revoked_at: dt.datetime | None, last_heartbeat: dt.datetime | None, now: dt.datetime, offline_after: float
) -> Literal["pending", "online", "offline", "revoked"]:
    if revoked_at is not None:
        return "revoked"
    if last_heartbeat is None:
        return "pending"
    return "online" if (now - last_heartbeat).total_seconds() <= offline_after else "offline"


def matching_agents(agents: list[LiveAgent], selector: DelegateSelector) -> list[str]:
    wanted = set(selector.tags)
    return [a.id for a in agents if wanted <= a.tags]
