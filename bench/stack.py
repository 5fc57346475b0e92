"""What the benchmarks share: NATS and PostgreSQL (embedded, or `IDP_NATS_URL`/`IDP_DATABASE_URL`) and
services started as their own processes, as in production."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.embedded import EmbeddedNats, EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parent.parent
DEV_TOKEN = "bench-dev-admin-token-0123456789"


@dataclass(frozen=True)
class Servers:
    nats_url: str
    database_url: str


@contextlib.contextmanager
def servers(data_dir: Path) -> Iterator[Servers]:
    nats_server = postgres = None
    nats_url, database_url = os.environ.get("IDP_NATS_URL"), os.environ.get("IDP_DATABASE_URL")
    try:
        if not nats_url:
            nats_server = EmbeddedNats(data_dir / "nats").start()
            nats_url = nats_server.url
        if not database_url:
            postgres = EmbeddedPostgres(data_dir / "postgres").start()
            postgres.create_database("bench")
            database_url = postgres.url("bench")
        yield Servers(nats_url, database_url)
    finally:
        if nats_server:
            nats_server.stop()
        if postgres:
            postgres.stop()


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def start_service(module: str, servers: Servers, log: Path, **env: str) -> ServiceProcess:
    """`python -m services.<module>` on a free port with the dev token; waits until `/readyz` answers 200."""
    port = free_port()
    environment = {
        **os.environ,
        "IDP_NATS_URL": servers.nats_url,
        "IDP_DATABASE_URL": servers.database_url,
        "IDP_HTTP_PORT": str(port),
        "IDP_LOG_LEVEL": "WARNING",
        "IDP_DEV_TOKEN": DEV_TOKEN,
        **env,
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{module}"], env=environment, cwd=ROOT, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return ServiceProcess(process, url)
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"{module} did not become ready")


def print_run(run: int, result: dict[str, float], number_format: str = ",.2f") -> None:
    print(f"run {run}: " + ", ".join(f"{k}={v:{number_format}}" for k, v in result.items()), flush=True)


def print_medians(results: list[dict[str, float]], number_format: str = ",.2f") -> None:
    """Each measure's median over the runs, as the Markdown table docs/benchmarks.md takes."""
    print("\n| measure | median |\n|---|---|")
    for key in results[0]:
        print(f"| {key} | {statistics.median(r[key] for r in results):{number_format}} |")
