"""`idp up` on embedded defaults: starts everything, reports ready, records a mutation, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

IDP = str(Path(sys.executable).with_name("idp"))  # the console script the project installs


def idp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([IDP, *args], env=env, capture_output=True, text=True, timeout=30)


def get_json(url: str, headers: dict[str, str]):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.loads(response.read())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment of a fresh machine: no external servers configured."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("IDP_", "OTEL_"))}


def test_idp_up_starts_reports_ready_and_stops_without_leftovers(tmp_path: Path, clean_env):
    data_dir = tmp_path / "stack"
    process = subprocess.Popen(
        [IDP, "up", "--data-dir", str(data_dir)],
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, report = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            result = idp("status", "--json", "--data-dir", str(data_dir), env=clean_env)
            if result.returncode == 0:
                report = json.loads(result.stdout)
                break
            time.sleep(1)
        assert report is not None, "the suite did not become ready"
        assert set(report["services"]) == {"catalog", "identity_sync", "workflow", "scorecard", "audit", "plugin_proxy"}
        assert all(s["ready"] for s in report["services"].values())
        for url in (report["nats_url"], report["database_url"]):
            assert ":4222" not in url and ":5432" not in url

        catalog, auth = report["services"]["catalog"]["url"], {"Authorization": f"Bearer {report['token']}"}
        components = get_json(f"{catalog}/api/catalog/entities?filter=kind=component", auth)
        assert len(components) == 6, "the demo organisation is loaded on first start"
        project = get_json(f"{catalog}/api/catalog/entities?scope=account.commerce.storefront_redesign", auth)
        assert [e["metadata"]["name"] for e in project] == ["storefront-next"]
        for service in ("scorecard", "catalog"):  # each reads repository files through the proxy as itself
            key = data_dir / "secrets" / f"{service}-api-key"
            assert key.read_text().startswith("idp_") and key.stat().st_mode & 0o777 == 0o600

        audit = report["services"]["audit"]["url"]
        request = urllib.request.Request(
            f"{audit}/api/audit/settings",
            method="PUT",
            data=b'{"retention_days": 99}',
            headers={"Authorization": f"Bearer {report['token']}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        state = json.loads((data_dir / "stack.json").read_text())
        pids = [s["pid"] for s in state["services"].values()] + [state["nats_pid"], state["postgres_pid"]]

        os.kill(state["services"]["scorecard"]["pid"], signal.SIGKILL)  # a crash: reported, then restarted
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            result = idp("status", "--json", "--data-dir", str(data_dir), env=clean_env)
            if result.returncode == 0 and json.loads(result.stdout)["services"]["scorecard"]["ready"]:
                break
        assert result.returncode == 0, "scorecard was not restarted"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "stopped" in output
    assert "scorecard exited with code -9; last log lines" in output and "restarting scorecard" in output
    time.sleep(0.5)
    assert [pid for pid in pids if alive(pid)] == []
    assert idp("status", "--json", "--data-dir", str(data_dir), env=clean_env).returncode == 1
