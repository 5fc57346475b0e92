"""The `idp` command: `idp up` starts the suite, `idp status` reports on it, `idp delegate run` runs an agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from services import devstack
from services.delegate.agent import main as run_delegate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="idp", description="Seed IDP developer portal backend")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start NATS, PostgreSQL and every service; Ctrl-C stops all")
    up.add_argument("--data-dir", type=Path, default=None, help="where data and logs live")
    status = commands.add_parser("status", help="show the stack running on a data directory")
    status.add_argument("--data-dir", type=Path, default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    delegate = commands.add_parser("delegate", help="run a delegate agent: `idp delegate run --token … --nats …`")
    delegate.add_argument("action", choices=["run"])
    delegate.add_argument("options", nargs=argparse.REMAINDER, help="see `idp delegate run --help`")
    args = parser.parse_args(argv)
    if args.command == "delegate":
        run_delegate(args.options)
    data_dir = (args.data_dir or devstack.default_data_dir()).expanduser().resolve()

    if args.command == "up":
        raise SystemExit(asyncio.run(devstack.up(data_dir)))
    report = asyncio.run(devstack.status(data_dir))
    if report is None:
        print(f"no stack is running on {data_dir}", file=sys.stderr)
        raise SystemExit(1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, svc in report["services"].items():
            print(f"{name:<14} {svc['url']:<26} {'ready' if svc['ready'] else 'NOT READY'}")
    raise SystemExit(0 if all(s["ready"] for s in report["services"].values()) else 3)
