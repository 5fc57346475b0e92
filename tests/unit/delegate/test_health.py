"""An agent replica's liveness and readiness, from what its heartbeats showed (a fake clock, no I/O)."""

from __future__ import annotations

import pytest

from services.delegate.health import Health, parse_address


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_alive_until_nats_has_been_silent_longer_than_the_limit(clock):
    health = Health(unhealthy_after=60, clock=clock)
    clock.now += 60
    assert health.liveness()[0]  # the start counts as a sign of life: a first connection gets the full limit
    clock.now += 1
    alive, reason = health.liveness()
    assert not alive and "61s" in reason
    health.heartbeat_answered(2.0)
    assert health.liveness() == (True, "NATS answers heartbeats")


def test_an_absent_proxy_keeps_the_replica_alive_but_not_ready(clock):
    """NATS replying "no responders" proves the connection; restarting the replica would not bring the proxy."""
    health = Health(unhealthy_after=60, clock=clock)
    health.heartbeat_answered(2.0)
    for _ in range(40):
        clock.now += 2
        health.proxy_absent()
    assert health.liveness()[0]
    ready, reason = health.readiness(connected=True)
    assert not ready and "80s" in reason


def test_ready_while_connected_and_answered_within_three_intervals(clock):
    health = Health(unhealthy_after=60, clock=clock)
    assert health.readiness(connected=True) == (False, "the plugin-proxy has not answered a heartbeat yet")
    health.heartbeat_answered(0.5)
    assert health.readiness(connected=True) == (True, "registered with the plugin-proxy")
    assert health.readiness(connected=False) == (False, "NATS is not connected")
    clock.now += 1.5
    assert health.readiness(connected=True)[0]
    clock.now += 0.1
    assert not health.readiness(connected=True)[0]


@pytest.mark.parametrize(
    ("address", "parsed"), [("0.0.0.0:8081", ("0.0.0.0", 8081)), ("[::]:9000", ("::", 9000)), ("pod:1", ("pod", 1))]
)
def test_addresses(address, parsed):
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["8081", ":8081", "host:", "host:0", "host:65536", "host:http"])
def test_bad_addresses(address):
    with pytest.raises(ValueError, match="host:port"):
        parse_address(address)
