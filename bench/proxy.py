"""Plugin-proxy benchmark: delegate overhead, throughput, memory while streaming 100 MB, and failover.

    python bench/proxy.py [--runs 5] [--requests 1000] [--concurrency 50] [--seconds 10] [--stream-mb 100]
                          [--jwt-caller]

Starts NATS and PostgreSQL (embedded, or IDP_NATS_URL / IDP_DATABASE_URL), the plugin-proxy, an upstream aiohttp
server on 127.0.0.2 and two delegate agent replicas (serving their probes, as deployed), each as its own process;
only loopback traffic. Per run:

- latency: `--requests` sequential small GETs through a direct endpoint and through a delegated one, alternately;
  p50/p99 of each and the delegate's added p50/p99;
- WebSocket: as many sequential 32-byte message round trips (sent, echoed) over one socket per endpoint; p50/p99;
- throughput: req/s with `--concurrency` clients for `--seconds`, direct and delegated, and the CPU time each
  request costs the proxy and the agents (user + system, which machine load does not inflate as it does
  latency);
- memory: resident size before, and peak RSS (the kernel's high-water mark, reset first through
  `/proc/<pid>/clear_refs`) of the proxy and of the agents while `--stream-mb` MB download and then upload
  through the delegate;
- failover: 20 clients call the delegated endpoint while one replica is killed (SIGKILL); reports the longest gap
  without a successful answer after the kill, and failed calls started after it (in-flight ones may fail).

The calls carry the dev token, which the proxy checks without PyJWT. With `--jwt-caller`, identity-sync runs too,
and before the first run the proxy verifies a user's access token, as it does once users call it: it then holds
PyJWT and cryptography for the rest of the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
import stack
from aiohttp import web

UPSTREAM_HOST = "127.0.0.2"
MB = 1024 * 1024


def serve_upstream(port: int) -> None:
    """The internal system: a tiny JSON answer, a stream of N bytes, a sink for uploads, a WebSocket echo."""

    async def small(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        size = int(request.query["bytes"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        block = b"x" * (256 * 1024)
        while size > 0:
            await response.write(block[: min(size, len(block))])
            size -= len(block)
        await response.write_eof()
        return response

    async def sink(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_bytes(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/small", small)
    app.router.add_get("/stream", stream)
    app.router.add_post("/sink", sink)
    web.run_app(app, host=UPSTREAM_HOST, port=port, access_log=None, print=None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def rss(pid: int, field: str) -> int:
    """`VmRSS` (resident now) or `VmHWM` (peak resident) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


class Bench:
    def __init__(self, proxy: stack.ServiceProcess, nats_url: str, token: str, log: Path) -> None:
        self.proxy, self.nats_url, self.token, self.log = proxy, nats_url, token, log
        self.agents: list[subprocess.Popen] = []
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {stack.DEV_TOKEN}"},
            connector=aiohttp.TCPConnector(limit=200),
        )

    def start_agent(self, index: int) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            arguments = ["--token", self.token, "--nats", self.nats_url, "--tag", "bench", "--instance", f"r{index}"]
            arguments += ["--health-address", f"127.0.0.1:{stack.free_port()}"]  # as deployed: probes served
            return subprocess.Popen(
                [sys.executable, "-m", "services.delegate", *arguments, "--allow", f"{UPSTREAM_HOST}/32"],
                cwd=stack.ROOT,
                stdout=out,
                stderr=out,
                env={**os.environ, "IDP_LOG_LEVEL": "WARNING"},
            )

    async def wait_for_replicas(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with self.session.get(f"{self.proxy.url}/api/proxy/agents") as r:
                agent = (await r.json())["items"][0]
            if agent["status"] == "online" and len(agent["instances"]) == count:
                await asyncio.sleep(1.5)  # the proxy's agent cache refreshes every second
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{count} agent replicas did not come online")

    async def call(self, endpoint: str, path: str = "/small") -> int:
        async with self.session.get(f"{self.proxy.url}/api/proxy/{endpoint}{path}") as r:
            await r.read()
            return r.status

    async def latency(self, requests: int) -> dict[str, list[float]]:
        """Sequential calls, direct and delegated alternately, so both see the same machine noise."""
        latencies: dict[str, list[float]] = {"direct": [], "delegated": []}
        for i in range(requests + 50):
            for endpoint, samples in latencies.items():
                started = time.perf_counter()
                assert await self.call(endpoint) == 200
                if i >= 50:  # the first calls warm the pools
                    samples.append(time.perf_counter() - started)
        return latencies

    async def websocket_latency(self, messages: int) -> dict[str, float]:
        """Message round trips over one socket per endpoint, alternately."""
        samples: dict[str, list[float]] = {"direct": [], "delegated": []}
        sockets = {e: await self.session.ws_connect(f"{self.proxy.url}/api/proxy/{e}/echo") for e in samples}
        try:
            for i in range(messages + 50):
                for endpoint, ws in sockets.items():
                    started = time.perf_counter()
                    await ws.send_bytes(b"m" * 32)
                    await ws.receive_bytes()
                    if i >= 50:
                        samples[endpoint].append(time.perf_counter() - started)
        finally:
            for ws in sockets.values():
                await ws.close()
        return {
            f"ws_{endpoint}_{name}_ms": percentile(values, q) * 1000
            for endpoint, values in samples.items()
            for name, q in (("p50", 0.5), ("p99", 0.99))
        }

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) used so far by the proxy and by the agents together."""

        def used(pid: int) -> float:
            times = psutil.Process(pid).cpu_times()
            return times.user + times.system

        return used(self.proxy.process.pid), sum(used(a.pid) for a in self.agents)

    async def throughput(self, endpoint: str, concurrency: int, seconds: float) -> dict[str, float]:
        """Requests per second, and CPU milliseconds per request in the proxy and in the agents."""
        done = 0
        deadline = time.perf_counter() + seconds
        proxy_cpu, agents_cpu = self.cpu_seconds()

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                assert await self.call(endpoint) == 200
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        proxy_after, agents_after = self.cpu_seconds()
        return {
            f"{endpoint}_rps": done / elapsed,
            f"{endpoint}_proxy_cpu_ms": (proxy_after - proxy_cpu) * 1000 / done,
            f"{endpoint}_agent_cpu_ms": (agents_after - agents_cpu) * 1000 / done,
        }

    async def stream_memory(self, size: int) -> dict[str, float]:
        pids = [self.proxy.process.pid, *(a.pid for a in self.agents)]
        before = [rss(pid, "VmRSS") / MB for pid in pids]
        for pid in pids:
            reset_peak(pid)
        async with self.session.get(f"{self.proxy.url}/api/proxy/delegated/stream", params={"bytes": str(size)}) as r:
            received = sum([len(c) async for c in r.content.iter_chunked(MB)])
        assert received == size, received

        async def body():
            block = b"u" * MB
            for _ in range(size // MB):
                yield block

        async with self.session.post(f"{self.proxy.url}/api/proxy/delegated/sink", data=body()) as r:
            assert (await r.json())["received"] == size
        peaks = [rss(pid, "VmHWM") / MB for pid in pids]
        return {
            "proxy_before_mb": before[0],
            "proxy_peak_mb": peaks[0],
            "agent_before_mb": max(before[1:]),
            "agent_peak_mb": max(peaks[1:]),
        }

    async def failover(self, clients: int = 20, after: float = 2.0) -> dict[str, float]:
        victim = self.agents[0]
        killed_at = 0.0
        successes: list[float] = []
        failed_after_kill = failed_in_flight = 0
        stop_at = time.perf_counter() + 2 * after

        async def client() -> None:
            nonlocal failed_after_kill, failed_in_flight
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    status = await self.call("delegated")
                except aiohttp.ClientError:
                    status = 0
                if status == 200:
                    successes.append(time.perf_counter())
                elif killed_at and started >= killed_at:
                    failed_after_kill += 1
                else:
                    failed_in_flight += 1

        async def kill() -> None:
            nonlocal killed_at
            await asyncio.sleep(after)
            killed_at = time.perf_counter()
            victim.send_signal(signal.SIGKILL)

        await asyncio.gather(kill(), *(client() for _ in range(clients)))
        victim.wait(10)
        after_kill = [killed_at, *sorted(t for t in successes if t >= killed_at)]
        gap = max(b - a for a, b in itertools.pairwise(after_kill)) if len(after_kill) > 1 else after
        self.agents[0] = self.start_agent(0)
        await self.wait_for_replicas(2)
        return {"failover_gap_s": gap, "failed_after_kill": failed_after_kill, "failed_in_flight": failed_in_flight}


async def verify_a_user_token(proxy_url: str, identity_url: str, admin: aiohttp.ClientSession) -> None:
    """Have the proxy verify an identity-sync access token (the user may use no endpoint: a 403 is expected)."""
    async with admin.post(f"{identity_url}/api/identity/users", json={"username": "bench-caller"}) as r:
        user = (await r.json())["id"]
    async with admin.post(f"{identity_url}/api/identity/users/{user}/tokens") as r:
        token = (await r.json())["access_token"]
    async with admin.get(f"{proxy_url}/api/proxy/direct/small", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status in (200, 403), f"the proxy did not accept the user's token: {r.status}"


async def run(args: argparse.Namespace, log_dir: Path, upstream_port: int) -> list[dict[str, float]]:
    results = []
    with stack.servers(log_dir) as servers:
        identity = stack.start_service("identity_sync", servers, log_dir / "identity.log") if args.jwt_caller else None
        proxy = stack.start_service("plugin_proxy", servers, log_dir / "proxy.log")
        bench = None
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {stack.DEV_TOKEN}"}) as admin:
                async with admin.post(f"{proxy.url}/api/proxy/agents", json={"id": "bench"}) as r:
                    token = (await r.json())["token"]
                target = f"http://{UPSTREAM_HOST}:{upstream_port}"
                for endpoint in [
                    {"name": "direct", "target": target, "allow_networks": [f"{UPSTREAM_HOST}/32"]},
                    {"name": "delegated", "target": target, "delegate": {"tags": ["bench"]}},
                ]:
                    body = {
                        **endpoint,
                        "methods": ["GET", "POST"],
                        "max_body_bytes": 2 * args.stream_mb * MB,
                        "websocket": True,
                    }
                    async with admin.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
                        assert r.status == 201, await r.text()
                if identity is not None:
                    await verify_a_user_token(proxy.url, identity.url, admin)
            bench = Bench(proxy, servers.nats_url, token, log_dir / "agents.log")
            bench.agents = [bench.start_agent(i) for i in range(2)]
            await bench.wait_for_replicas(2)
            for run_number in range(1, args.runs + 1):
                latencies = await bench.latency(args.requests)
                direct, delegated = latencies["direct"], latencies["delegated"]
                result = {
                    "run": run_number,
                    "direct_p50_ms": percentile(direct, 0.5) * 1000,
                    "direct_p99_ms": percentile(direct, 0.99) * 1000,
                    "delegate_p50_ms": percentile(delegated, 0.5) * 1000,
                    "delegate_p99_ms": percentile(delegated, 0.99) * 1000,
                    **await bench.websocket_latency(args.requests),
                    **await bench.throughput("direct", args.concurrency, args.seconds),
                    **await bench.throughput("delegated", args.concurrency, args.seconds),
                    **await bench.stream_memory(args.stream_mb * MB),
                    **await bench.failover(),
                }
                result["added_p50_ms"] = result["delegate_p50_ms"] - result["direct_p50_ms"]
                result["added_p99_ms"] = result["delegate_p99_ms"] - result["direct_p99_ms"]
                print(json.dumps({k: round(v, 2) for k, v in result.items()}), flush=True)
                results.append(result)
        finally:
            if bench is not None:
                for agent in bench.agents:
                    agent.terminate()
                    agent.wait(30)
                await bench.session.close()
            proxy.stop()
            if identity is not None:
                identity.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--stream-mb", type=int, default=100)
    parser.add_argument("--jwt-caller", action="store_true", help="the proxy verifies a user's JWT first")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    upstream_port = stack.free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(upstream_port)], cwd=stack.ROOT)
    try:
        with tempfile.TemporaryDirectory(prefix="idp-bench-proxy-") as tmp:
            results = asyncio.run(run(args, Path(tmp), upstream_port))
    finally:
        upstream.terminate()
        upstream.wait(10)
    medians = {key: statistics.median(r[key] for r in results) for key in results[0] if key != "run"}
    print("median:", json.dumps({k: round(v, 2) for k, v in medians.items()}))


if __name__ == "__main__":
    main()
