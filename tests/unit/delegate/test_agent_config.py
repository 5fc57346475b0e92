"""`idp delegate run` options: flags, environment fallbacks, and refusals."""

from __future__ import annotations

import ipaddress

import pytest

from services.delegate.agent import parse_args

TOKEN = "corp." + "s" * 43


def test_flags_and_environment():
    config = parse_args(
        ["--token", TOKEN, "--nats", "nats://n:4222", "--tag", "eu", "--allow", "10.0.0.0/8", "--allow", "*.corp"],
        environ={"VAULT_ADDR": "https://vault:8200", "VAULT_TOKEN": "t"},
    )
    assert config.agent_id == "corp" and config.tags == ("eu",)
    assert config.policy.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.policy.allowed_hosts == ("*.corp",) and not config.policy.allow_public
    assert config.vault is not None and config.vault.address == "https://vault:8200"
    from_env = parse_args(
        [],
        environ={
            "IDP_DELEGATE_TOKEN": TOKEN,
            "IDP_NATS_URL": "nats://n:4222",
            "IDP_DELEGATE_TAGS": "a, b",
            "IDP_DELEGATE_ALLOW": "git.internal",
        },
    )
    assert from_env.tags == ("a", "b") and from_env.policy.allowed_hosts == ("git.internal",)
    assert from_env.vault is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--nats", "nats://n"],
        ["--token", "not-a-token", "--nats", "nats://n"],
        ["--token", TOKEN],
        ["--token", TOKEN, "--nats", "nats://n", "--allow", "bad host!"],
        ["--token", TOKEN, "--nats", "nats://n", "--health-address", "8081"],
        ["--token", TOKEN, "--nats", "nats://n", "--health-address", "0.0.0.0:99999"],
        ["--token", TOKEN, "--nats", "nats://n", "--unhealthy-after", "0"],
    ],
)
def test_bad_options_stop_with_a_usage_error(argv):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, environ={})
    assert exited.value.code == 2


def test_a_bad_threshold_in_the_environment_is_a_usage_error():
    with pytest.raises(SystemExit) as exited:
        parse_args(["--token", TOKEN, "--nats", "nats://n"], environ={"IDP_DELEGATE_UNHEALTHY_AFTER_SECONDS": "soon"})
    assert exited.value.code == 2


def test_probes_are_served_only_when_asked_for():
    assert parse_args(["--token", TOKEN, "--nats", "nats://n"], environ={}).health_address is None
    config = parse_args(
        ["--token", TOKEN, "--nats", "nats://n"],
        environ={"IDP_DELEGATE_HEALTH_ADDRESS": "0.0.0.0:8081", "IDP_DELEGATE_UNHEALTHY_AFTER_SECONDS": "45"},
    )
    assert config.health_address == "0.0.0.0:8081" and config.unhealthy_after == 45
