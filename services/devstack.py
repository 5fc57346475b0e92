"""`idp up`: the whole suite on one machine.

NATS and PostgreSQL run from their wheels under the data directory (unless `IDP_NATS_URL` /
`IDP_DATABASE_URL` point elsewhere), every service runs as its own process, and a crashed service is
reported with its last log lines and restarted with backoff. `stack.json` in the data directory tells
`idp status` (and scripts) where everything is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from shared.embedded import EmbeddedNats, EmbeddedPostgres, free_port

SERVICES = ("catalog", "identity_sync", "workflow", "scorecard", "audit", "plugin_proxy")
PREFERRED_PORTS = dict(zip(SERVICES, range(8081, 8087), strict=True))
STATE_FILE = "stack.json"
DEMO_DATA = Path(__file__).parent / "demo" / "fernhill.yaml"
DEMO_MARKER = "demo-loaded"
PROXY_CALLERS = ("scorecard", "catalog")
"""Services that read repository files through the plugin-proxy, each as its own service account."""


def proxy_key_path(service: str) -> Path:
    """Where `idp up` keeps the API key `service` calls the plugin-proxy with (under the data directory)."""
    return Path("secrets") / f"{service}-api-key"


READY_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0


def default_data_dir() -> Path:
    base = os.environ.get("IDP_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "seed-idp"
    )
    return Path(base)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The running stack's state, or None when no `idp up` is alive on this data directory."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if _pid_alive(state.get("pid")) else None


def dev_token(data_dir: Path) -> str:
    """The dev admin token of this data directory: `IDP_DEV_TOKEN`, or one generated once and kept."""
    if os.environ.get("IDP_DEV_TOKEN"):
        return os.environ["IDP_DEV_TOKEN"]
    path = data_dir / "dev-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class ServiceProcess:
    """One supervised service process and its restart bookkeeping."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    stopping: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{self.name}",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches `idp up` only, which stops services in order.
            )
        self.started_at = time.monotonic()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def supervise(self) -> None:
        """Restart the process whenever it dies, with exponential backoff, until stopping."""
        backoff = 1.0
        while not self.stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self.stopping:
                return
            print(f"\n! {self.name} exited with code {code}; last log lines:\n{self.tail()}\n", flush=True)
            if time.monotonic() - self.started_at > 60:
                backoff = 1.0
            print(f"! restarting {self.name} in {backoff:.0f}s", flush=True)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if not self.stopping:
                self.restarts += 1
                await self.start()

    async def stop(self) -> None:
        self.stopping = True
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def _wait_ready(services: list[ServiceProcess], timeout: float) -> list[str]:
    """Poll every `/readyz`; returns the names still not ready at the deadline."""
    deadline = time.monotonic() + timeout
    pending = {s.name: s for s in services}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while pending and time.monotonic() < deadline:
            for name, svc in list(pending.items()):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{svc.url}/readyz") as response:
                        if response.status == 200:
                            del pending[name]
            if pending:
                await asyncio.sleep(0.3)
    return sorted(pending)


@dataclass
class Stack:
    """Everything `idp up` started, so that stopping undoes exactly that, in reverse order."""

    data_dir: Path
    nats_server: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None
    services: list[ServiceProcess] = field(default_factory=list)
    supervisors: list[asyncio.Task] = field(default_factory=list)

    async def start_servers(self) -> tuple[str, str]:
        """NATS and PostgreSQL URLs: from `IDP_NATS_URL`/`IDP_DATABASE_URL`, or embedded servers."""
        nats_url = os.environ.get("IDP_NATS_URL")
        if not nats_url:
            self.nats_server = await asyncio.to_thread(EmbeddedNats(self.data_dir / "nats").start)
            nats_url = self.nats_server.url
        database_url = os.environ.get("IDP_DATABASE_URL")
        if not database_url:
            self.postgres = await asyncio.to_thread(EmbeddedPostgres(self.data_dir / "postgres").start)
            await asyncio.to_thread(self.postgres.create_database, "idp")
            database_url = self.postgres.url("idp")
        return nats_url, database_url

    async def start_services(self, env: dict[str, str]) -> None:
        (self.data_dir / "logs").mkdir(exist_ok=True)
        ports = {
            name: PREFERRED_PORTS[name] if _port_is_free(PREFERRED_PORTS[name]) else free_port() for name in SERVICES
        }
        # Identity-sync reassigns ownership through the catalog's HTTP API; the scorecard and the catalog read
        # repository files through the plugin-proxy, each with its service account's key (`provision_proxy_caller`).
        env = {
            "IDP_PROXY_URL": f"http://127.0.0.1:{ports['plugin_proxy']}",
            **env,
            "IDP_CATALOG_URL": f"http://127.0.0.1:{ports['catalog']}",
        }
        for name, port in ports.items():
            own = {"IDP_HTTP_PORT": str(port)}
            if name in PROXY_CALLERS:
                own["IDP_PROXY_TOKEN"] = f"file:{(self.data_dir / proxy_key_path(name)).resolve()}"
            self.services.append(ServiceProcess(name, port, {**env, **own}, self.data_dir / "logs" / f"{name}.log"))
        for svc in self.services:
            await svc.start()
        self.supervisors = [asyncio.create_task(svc.supervise()) for svc in self.services]

    def state(self, token: str, nats_url: str, database_url: str) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "data_dir": str(self.data_dir),
            "services": {s.name: {"url": s.url, "pid": s.process.pid if s.process else None} for s in self.services},
            "token": token,
            "nats_url": nats_url,
            "database_url": database_url,
            "nats_pid": self.nats_server.pid if self.nats_server else None,
            "postgres_pid": self.postgres.pid if self.postgres else None,
        }

    async def stop(self) -> None:
        for task in self.supervisors:
            task.cancel()
        await asyncio.gather(*(svc.stop() for svc in self.services))
        if self.nats_server:
            await asyncio.to_thread(self.nats_server.stop)
        if self.postgres:
            await asyncio.to_thread(self.postgres.stop)


async def up(data_dir: Path) -> int:
    """Start everything, wait until ready, print where it is, and run until SIGINT/SIGTERM."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if read_state(data_dir):
        print(f"a stack is already running on {data_dir} (see `idp status --data-dir {data_dir}`)", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(data_dir)
    try:
        return await _run(stack, stop)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"idp up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the suite ...", flush=True)
        await stack.stop()
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        print("stopped", flush=True)


async def _run(stack: Stack, stop: asyncio.Event) -> int:
    nats_url, database_url = await stack.start_servers()
    token = dev_token(stack.data_dir)
    await stack.start_services(
        {
            **os.environ,
            "IDP_NATS_URL": nats_url,
            "IDP_DATABASE_URL": database_url,
            "IDP_DEV_TOKEN": token,
            "IDP_HTTP_HOST": "127.0.0.1",
            "IDP_ENVIRONMENT": "development",
            # On a developer's machine, `file:` locations may read the directory `idp up` was started from.
            "IDP_FILE_LOCATION_ROOTS": os.environ.get("IDP_FILE_LOCATION_ROOTS", os.getcwd()),
        }
    )
    waiting = asyncio.create_task(_wait_ready(stack.services, READY_TIMEOUT))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        waiting.cancel()
        return 0
    stopping.cancel()
    not_ready = waiting.result()
    if not_ready:
        for svc in stack.services:
            if svc.name in not_ready:
                print(f"! {svc.name} is not ready after {READY_TIMEOUT:.0f}s; last log lines:\n{svc.tail()}")
        return 1
    identity = next(s for s in stack.services if s.name == "identity_sync")
    for caller in PROXY_CALLERS:
        key_path = stack.data_dir / proxy_key_path(caller)
        if not key_path.exists():
            await provision_proxy_caller(identity.url, token, caller, key_path)
    marker = stack.data_dir / DEMO_MARKER
    if not marker.exists():
        catalog = next(s for s in stack.services if s.name == "catalog")
        created = await load_demo_data(catalog.url, token)
        marker.write_text(f"{created} entities\n")
        print(f"loaded the demo organisation: {created} entities", flush=True)
    state = stack.state(token, nats_url, database_url)
    state_path = stack.data_dir / STATE_FILE
    state_path.write_text(json.dumps(state, indent=2))
    state_path.chmod(0o600)
    _print_summary(state)
    await stop.wait()
    return 0


async def load_demo_data(catalog_url: str, token: str, path: Path = DEMO_DATA) -> int:
    """Create the demo organisation through the catalog's Entity API; entities already there are kept."""
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    created = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for document in documents:
            scope = document.pop("x-scope", "account")
            url = f"{catalog_url}/api/catalog/entities"
            async with session.post(url, params={"scope": scope}, json=document) as response:
                if response.status == 201:
                    created += 1
                elif response.status != 409:
                    raise RuntimeError(f"demo entity {document['metadata']['name']}: {await response.text()}")
    return created


async def provision_proxy_caller(identity_url: str, token: str, service: str, key_path: Path) -> None:
    """The `service` service account, bound at the account to a role holding `proxy_endpoint_use`, and a new API
    key for it in `key_path` (mode 0600), which the service reads as `IDP_PROXY_TOKEN=file:…`."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

        async def post(path: str, body: dict[str, Any], accept: tuple[int, ...] = (201,)) -> tuple[int, Any]:
            async with session.post(f"{identity_url}/api/identity/{path}", json=body) as response:
                if response.status not in accept:
                    raise RuntimeError(f"provisioning the {service} service account: {await response.text()}")
                return response.status, await response.json()

        status, account = await post("service-accounts", {"name": service}, accept=(201, 409))
        if status == 409:  # made by an earlier start whose key file is gone: it keeps its binding
            async with session.get(f"{identity_url}/api/identity/service-accounts", params={"q": service}) as r:
                account = next(a for a in (await r.json())["items"] if a["name"] == service)
        else:
            reach = {"scope": "account", "all_resources": True, "include_child_scopes": True}
            name = f"{service.capitalize()} repository files"
            _, role = await post("roles", {"scope": "account", "name": name, "permissions": ["proxy_endpoint_use"]})
            _, group = await post("resource-groups", {**reach, "name": name})
            subject = f"service_account:{account['id']}"
            binding = {"scope": "account", "subject": subject, "role_id": role["id"], "resource_group_id": group["id"]}
            await post("role-bindings", binding)
        _, key = await post(f"service-accounts/{account['id']}/keys", {"name": "proxy", "expires_in_days": 3650})
    key_path.parent.mkdir(mode=0o700, exist_ok=True)
    key_path.touch(mode=0o600)
    key_path.write_text(key["key"])


def _print_summary(state: dict[str, Any]) -> None:
    print("\nSeed IDP is up:")
    for name, svc in state["services"].items():
        print(f"  {name:<14} {svc['url']}")
    print(f"  NATS           {state['nats_url']}")
    print(f"  PostgreSQL     {state['database_url']}")
    print(f"\nDev admin token (development only):\n  {state['token']}")
    print(
        f"\nTry: curl -H 'Authorization: Bearer {state['token']}' {state['services']['audit']['url']}/api/audit/events"
    )
    print("Press Ctrl-C to stop.\n", flush=True)


async def status(data_dir: Path) -> dict[str, Any] | None:
    """The running stack with each service's current readiness, or None."""
    state = read_state(data_dir)
    if state is None:
        return None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:

        async def ready(url: str) -> bool:
            try:
                async with session.get(f"{url}/readyz") as response:
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        results = await asyncio.gather(*(ready(s["url"]) for s in state["services"].values()))
    return {
        "services": {
            name: {"url": svc["url"], "ready": ok}
            for (name, svc), ok in zip(state["services"].items(), results, strict=True)
        },
        "token": state["token"],
        "nats_url": state["nats_url"],
        "database_url": state["database_url"],
    }
