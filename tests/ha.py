"""The high-availability formation for tests: scripts/ha.sh (etcd and three Patroni nodes, a
primary, a synchronous standby and a second standby) in a temporary folder, on free ports,
each node on its own port. Stopped by pid, whatever happened, when the context ends.

    with formation() as f:
        f.url("booking")           # the multi-host URL that follows the primary
        killed = f.kill_primary()   # kill -9 of the primary's postmaster
        new_port = f.wait_for_new_primary(killed.port)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.pg import ROOT, migrate
from tests.shim.server import free_port

HA_SH = ROOT / "scripts" / "ha.sh"
DBNAME = "booking"
START_TIMEOUT_S = 120

# The role each test login holds (CONTRACT.md, Roles).
DUTY_ROLES = {"app": "booking_app", "shim": "booking_shim", "worker": "booking_worker"}


def create_login(conn: psycopg.Connection, login: str, duty: str) -> None:
    """A login role for one duty (app, shim, worker) holding that duty's role."""
    conn.execute(f'CREATE ROLE "{login}" LOGIN')
    conn.execute(f'GRANT {DUTY_ROLES[duty]} TO "{login}"')


@dataclass
class Kill:
    port: int  # the primary's port
    pid: int  # its postmaster
    at: float  # time.monotonic() of the kill
    wall: float  # time.time() of the kill


class Formation:
    def __init__(self, base: Path):
        self.base = base
        self.pg_ports = [free_port() for _ in range(3)]
        self.rest_ports = [free_port() for _ in range(3)]
        self.etcd_ports = [free_port(), free_port()]
        self.env = dict(
            os.environ,
            HA_BASE=str(base),
            HA_PG_PORTS=",".join(map(str, self.pg_ports)),
            HA_REST_PORTS=",".join(map(str, self.rest_ports)),
            HA_ETCD_PORTS=",".join(map(str, self.etcd_ports)),
            HA_START_TIMEOUT_S=str(START_TIMEOUT_S),
            DBNAME=DBNAME,
        )

    def ha(self, *args: str, check: bool = True, timeout: float = START_TIMEOUT_S + 30) -> str:
        out = subprocess.run([str(HA_SH), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"scripts/ha.sh {' '.join(args)} failed ({out.returncode}): {out.stderr[-3000:]}"
                               f"\n{self.logs_tail()}")
        return out.stdout

    def url(self, dbname: str = DBNAME, user: str = "postgres") -> str:
        """Every node in one URL; libpq keeps the one that accepts writes."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.pg_ports)
        return f"postgresql://{user}@{hosts}/{dbname}?target_session_attrs=read-write&connect_timeout=2"

    def node_url(self, port: int, dbname: str = DBNAME) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{dbname}"

    def members(self) -> list[dict]:
        """Patroni's view of the cluster (any node's REST API answers for all); [] if none answers."""
        for port in self.rest_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster", timeout=2) as resp:
                    return json.load(resp)["members"]
            except OSError:
                continue
        return []

    def primary_port(self) -> int | None:
        leaders = [m["port"] for m in self.members() if m["role"] == "leader" and m["state"] == "running"]
        return leaders[0] if leaders else None

    def sync_standby_port(self) -> int | None:
        syncs = [m["port"] for m in self.members() if m["role"] == "sync_standby" and m["state"] in ("running", "streaming")]
        return syncs[0] if syncs else None

    def node_dir(self, port: int) -> Path:
        return self.base / f"node{self.pg_ports.index(port) + 1}"

    def postmaster_pid(self, port: int) -> int:
        return int((self.node_dir(port) / "data" / "postmaster.pid").read_text().split()[0])

    def kill_primary(self) -> Kill:
        """kill -9 of the primary's postmaster (its children die with it: no clean shutdown)."""
        port = self.primary_port()
        assert port is not None, "no primary to kill"
        pid = self.postmaster_pid(port)
        os.kill(pid, signal.SIGKILL)
        return Kill(port=port, pid=pid, at=time.monotonic(), wall=time.time())

    def wait_for_new_primary(self, old_port: int, timeout_s: float = 60) -> int:
        """The port of the node Patroni promoted instead of old_port, once it accepts writes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port:
                try:
                    with psycopg.connect(self.node_url(port), autocommit=True, connect_timeout=2) as conn:
                        if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                            return port
                except psycopg.OperationalError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"no new primary within {timeout_s} s: {self.members()}\n{self.logs_tail()}")

    def wait_for_sync_standby(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.sync_standby_port()
            if port is not None:
                return port
            time.sleep(0.2)
        raise AssertionError(f"no synchronous standby within {timeout_s} s: {self.members()}")

    # What a failover looks like in Patroni's logs (its lines and the servers' own).
    FAILOVER_MARKS = ("Postgresql is not running", "Primary crashed", "promoted self to leader",
                      "database system is ready to accept connections", "is now a synchronous standby",
                      "started streaming WAL")

    def failover_timeline(self, since: str) -> list[str]:
        """The failover's lines of every node's log from `since` ("HH:MM:SS" UTC) on, in order."""
        found = []
        for log in sorted(self.base.glob("node*/patroni.log")):
            for line in log.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) > 2 and parts[1][:8] >= since and any(m in line for m in self.FAILOVER_MARKS):
                    found.append(f"{parts[1][:12]} {log.parent.name}: {' '.join(parts[2:])[:110]}")
        return sorted(found)

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for log in sorted(self.base.glob("node*/patroni.log")):
            text = log.read_text(errors="replace").splitlines()
            out.append(f"--- {log.relative_to(self.base)}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def kill_everything(self) -> None:
        """Last resort after `ha.sh stop`: every pid the formation wrote, SIGKILL."""
        pidfiles = [self.base / "etcd.pid", *self.base.glob("node*/patroni.pid"), *self.base.glob("node*/data/postmaster.pid")]
        for pidfile in pidfiles:
            try:
                pid = int(pidfile.read_text().split()[0])
                # Only a process of this formation (its command line names the folder):
                # a stale pid file must not kill whatever took the number since.
                if str(self.base) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


@contextmanager
def formation(migrated: bool = True):
    """A running formation (primary with a synchronous standby, database `booking`, the
    migrations applied when migrated=True); everything stopped by pid afterwards."""
    base = Path(tempfile.mkdtemp(prefix="booking-ha-"))
    os.chmod(base, 0o755)  # the servers run as 'postgres'
    f = Formation(base)
    try:
        f.ha("start")
        if migrated:
            migrate(f.url())
        yield f
    finally:
        try:
            f.ha("stop", check=False, timeout=60)
        finally:
            f.kill_everything()
            shutil.rmtree(base, ignore_errors=True)
