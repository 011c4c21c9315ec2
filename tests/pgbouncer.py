"""A real pgbouncer (Debian's, 1.18) for tests: started on 127.0.0.1 and a free port in
front of a test cluster, in transaction mode, stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from tests.pg import LOGINS, wait_until_up
from tests.shim.server import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
# pgbouncer refuses to run as root; as root it runs as this user (like scripts/pgrun).
RUN_AS = "postgres"


def version() -> str:
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


class Bouncer:
    def __init__(self, port: int, workdir: Path, proc: subprocess.Popen):
        self.port, self.workdir, self.proc = port, workdir, proc

    def url(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        return (self.workdir / "pgbouncer.log").read_text(errors="replace")


@contextmanager
def pgbouncer(server_url: str, *, pool_size: int = 8, extra_databases: dict[str, str] | None = None):
    """pgbouncer in pool_mode=transaction in front of server_url's host and port, every
    database (`*`), auth_type=trust on loopback for the test logins. extra_databases:
    more [databases] lines, name -> connection string (e.g. a pool of one server
    connection)."""
    server = urlparse(server_url)
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    port = free_port()
    users = ["postgres", *LOGINS]
    (workdir / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in users))
    databases = [f"* = host={server.hostname} port={server.port}"]
    databases += [f"{name} = {conninfo}" for name, conninfo in (extra_databases or {}).items()]
    (workdir / "pgbouncer.ini").write_text("\n".join([
        "[databases]", *databases, "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {workdir / 'userlist.txt'}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "max_client_conn = 500",
        # Transaction mode: the reset query is never sent (server_reset_query_always = 0).
        "server_reset_query = DISCARD ALL",
        f"logfile = {workdir / 'pgbouncer.log'}",
        f"pidfile = {workdir / 'pgbouncer.pid'}",
        "log_connections = 0",
        "log_disconnections = 0",
        "",
    ]))
    cmd = [PGBOUNCER, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(workdir, RUN_AS)
        for f in workdir.iterdir():
            shutil.chown(f, RUN_AS)
        cmd = ["setpriv", f"--reuid={RUN_AS}", f"--regid={RUN_AS}", "--init-groups", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_up(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() is None, proc,
                          "pgbouncer", seconds=15)
        except RuntimeError as exc:
            if proc.poll() is None:
                raise
            log = workdir / "pgbouncer.log"
            raise RuntimeError(f"{exc}: {proc.stdout.read().decode(errors='replace')}"
                               f"{log.read_text(errors='replace') if log.exists() else ''}") from None
        yield Bouncer(port, workdir, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # safe shutdown: waits for the clients to go
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # immediate shutdown
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
