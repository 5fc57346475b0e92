"""Forwarding rules, address policies and secret references: pure functions, no fixtures."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from yarl import URL

from services.plugin_proxy.model import (
    DelegateSelector,
    EndpointSpec,
    LiveAgent,
    PathRewrite,
    agent_status,
    forwarded_path,
    matching_agents,
    public_location,
    request_headers,
    response_headers,
    upstream_url,
)
from shared.delegate_wire import agent_id_of_token
from shared.egress import AddressPolicy, EgressDeniedError
from shared.errors import InputError
from shared.secretref import SecretError, parse_secret_ref

SPEC = EndpointSpec(target="https://git.internal/api/v4", request_headers=["X-Team"], response_headers=["X-Total"])


@pytest.mark.parametrize("tail", ["/..", "/a/%2E%2e", "/%25%32%65%25%32%65/x", "/a%2Fb", "/a%5Cb", "/a%0Ab", "/%7f"])
def test_traversal_and_control_bytes_are_refused(tail):
    with pytest.raises(InputError, match="path"):
        forwarded_path(tail)


def test_paths_join_under_the_target_with_rewrites():
    assert forwarded_path("") == "/"
    assert str(upstream_url(SPEC, "/projects/a%20b", "x=1")) == "https://git.internal/api/v4/projects/a%20b?x=1"
    rewritten = EndpointSpec(target="http://h:8080/", path_rewrite=[PathRewrite("^/old/", "/new/")])
    assert str(upstream_url(rewritten, "/old/x", "")) == "http://h:8080/new/x"


def test_request_headers_drop_credentials_hop_by_hop_and_unlisted():
    incoming = [
        ("Authorization", "Bearer caller"),
        ("Cookie", "a=b"),
        ("Connection", "X-Team, close"),
        ("X-Team", "hop"),
        ("Accept", "application/json"),
        ("Transfer-Encoding", "chunked"),
        ("X-Unlisted", "1"),
    ]
    headers = request_headers(SPEC, incoming, client="10.0.0.1", host="idp.example", scheme="https", prefix="/p")
    assert headers == [
        ("Accept", "application/json"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "idp.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Prefix", "/p"),
    ]


def test_response_headers_and_locations():
    upstream = [("Set-Cookie", "s=1"), ("X-Total", "3"), ("Server", "internal"), ("Content-Type", "text/plain")]
    assert response_headers(SPEC, upstream, public_prefix="/api/proxy/git") == [
        ("X-Total", "3"),
        ("Content-Type", "text/plain"),
    ]
    assert public_location(SPEC, "/api/v4/next?page=2", "/api/proxy/git") == "/api/proxy/git/next?page=2"
    assert public_location(SPEC, "https://git.internal/api/v4", "/api/proxy/git") == "/api/proxy/git/"
    assert public_location(SPEC, "https://git.internal/admin", "/api/proxy/git") is None
    assert public_location(SPEC, "http://169.254.169.254/", "/api/proxy/git") is None


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fd00:ec2::254", False),
        ("::ffff:127.0.0.1", False),
        ("2606:4700::1111", True),
    ],
)
def test_direct_policy_denies_non_public_addresses(address, allowed):
    assert AddressPolicy().address_allowed(ipaddress.ip_address(address)) is allowed


def test_agent_policy_allows_only_its_list():
    policy = AddressPolicy.from_entries(["10.0.0.0/8", "*.corp.example", "git.internal"], allow_public=False)
    assert policy.address_allowed(ipaddress.ip_address("10.9.9.9"))
    assert not policy.address_allowed(ipaddress.ip_address("93.184.216.34"))
    assert policy.host_allowed("a.corp.example") and policy.host_allowed("GIT.internal.")
    assert not policy.host_allowed("corp.example.evil") and not policy.host_allowed("xcorp.example")
    assert (
        policy.fingerprint()
        == AddressPolicy.from_entries(
            ["git.internal", "*.corp.example", "10.0.0.0/8"], allow_public=False
        ).fingerprint()
    )
    with pytest.raises(EgressDeniedError):
        policy.check_url(URL("http://11.0.0.1/"))
    with pytest.raises(EgressDeniedError):
        policy.check_url(URL("file:///etc/passwd"))
    with pytest.raises(ValueError, match="neither a CIDR nor a host"):
        AddressPolicy.from_entries(["not a host!"], allow_public=False)


def test_secret_references():
    assert parse_secret_ref("env:GITLAB_TOKEN").location == "GITLAB_TOKEN"
    vault = parse_secret_ref("vault:kv/team/jira#token")
    assert (vault.source, vault.location, vault.key) == ("vault", "kv/team/jira", "token")
    for bad in ["plain", "env:", "file:relative", "vault:kv#k", "vault:kv/../x#k", "vault:kv/x"]:
        with pytest.raises(SecretError):
            parse_secret_ref(bad)


def test_agents_tokens_status_and_selection():
    assert agent_id_of_token("corp." + "s" * 43) == "corp"
    assert agent_id_of_token("corp.short") is None and agent_id_of_token("Bad." + "s" * 43) is None
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert agent_status(None, None, now, 6) == "pending"
    assert agent_status(None, now - dt.timedelta(seconds=3), now, 6) == "online"
    assert agent_status(None, now - dt.timedelta(seconds=7), now, 6) == "offline"
    assert agent_status(now, now, now, 6) == "revoked"
    agents = [LiveAgent("a", frozenset({"eu", "git"})), LiveAgent("b", frozenset({"us", "git"}))]
    assert matching_agents(agents, DelegateSelector(tags=["git"])) == ["a", "b"]
    assert matching_agents(agents, DelegateSelector(tags=["eu", "git"])) == ["a"]
