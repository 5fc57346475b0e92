"""A real OpenLDAP `slapd` on a free loopback port, installed with apt-get when missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import ldap3
import pytest

from shared.embedded import free_port

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "slapd-test-secret-7f3a"
SCHEMAS = ("core", "cosine", "inetorgperson")
_CONFIG = """{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {directory}/slapd.pid
database mdb
maxsize 104857600
suffix "{suffix}"
rootdn "{admin}"
rootpw {password}
directory {directory}/data
"""


def slapd_binary() -> str:
    """The slapd executable; installs the Debian package first when it is missing, or skips the test."""
    found = shutil.which("slapd") or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd") else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("slapd is not installed and apt-get cannot install it here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "slapd"]):
        result = subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
        if result.returncode != 0:
            pytest.skip(f"installing slapd failed: {result.stderr.decode(errors='replace')[-300:]}")
    return "/usr/sbin/slapd"


class Slapd:
    """slapd serving `dc=example,dc=org` from a temporary directory, stopped by its own process id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Slapd:
        binary = slapd_binary()
        (self.directory / "data").mkdir(parents=True)
        includes = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS)
        config = self.directory / "slapd.conf"
        config.write_text(
            _CONFIG.format(
                includes=includes, directory=self.directory, suffix=SUFFIX, admin=ADMIN_DN, password=ADMIN_PASSWORD
            )
        )
        # `-d 0` keeps slapd in the foreground, so this process owns it and stops it.
        self.process = subprocess.Popen(
            [binary, "-f", str(config), "-h", f"{self.url}/", "-d", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"slapd exited: {self.process.stderr.read().decode(errors='replace')}") from None
                time.sleep(0.05)
        raise RuntimeError("slapd did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def connect(self) -> ldap3.Connection:
        return ldap3.Connection(ldap3.Server(self.url), ADMIN_DN, ADMIN_PASSWORD, auto_bind=True, raise_exceptions=True)


def seed(conn: ldap3.Connection, users: dict[str, str], groups: dict[str, list[str]]) -> None:
    """`users` {uid: display name}; `groups` {cn: member uids, or `cn=<group>` for nested groups}."""
    conn.add(SUFFIX, ["dcObject", "organization"], {"o": "Example", "dc": "example"})
    for ou in ("people", "groups"):
        conn.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
    for uid, name in users.items():
        conn.add(
            f"uid={uid},ou=people,{SUFFIX}",
            ["inetOrgPerson"],
            {"cn": name, "sn": name.split()[-1], "uid": uid, "mail": f"{uid}@example.org"},
        )
    for cn, members in groups.items():
        dns = [f"{m},ou=groups,{SUFFIX}" if m.startswith("cn=") else f"uid={m},ou=people,{SUFFIX}" for m in members]
        conn.add(f"cn={cn},ou=groups,{SUFFIX}", ["groupOfNames"], {"cn": cn, "member": dns, "description": cn.title()})
