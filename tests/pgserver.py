"""A private PostgreSQL cluster for tests that stop, restart or front the server.

The server at ``TASKDB_TEST_PG_URL`` is shared with other test runs: nothing may
stop it. Tests of outages and restarts (tests/chaos, tests/integration/test_outage.py)
start their own cluster instead: ``initdb`` into a temporary directory (as the
``postgres`` user when run as root: initdb refuses root), a free port on
127.0.0.1, its unix socket in that directory, ``fsync=off``. :meth:`PrivateCluster.stop`
and :meth:`PrivateCluster.start` make the outage; :meth:`PrivateCluster.destroy`
removes everything. :class:`PgBouncer` runs Debian's ``pgbouncer`` in transaction
pooling mode in front of a server. Free of taskdb: the chaos harness uses it
outside pytest too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
}


class ClusterUnavailable(RuntimeError):
    """A private cluster cannot be made on this machine (the message says why)."""


def find_bindir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl`` (``pg_config --bindir``, else the
    newest /usr/lib/postgresql/*/bin)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, check=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for path in candidates:
        if (Path(path) / "initdb").is_file() and (Path(path) / "pg_ctl").is_file():
            return Path(path)
    raise ClusterUnavailable("no initdb/pg_ctl found (pg_config --bindir, /usr/lib/postgresql)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    """One PostgreSQL cluster of our own (see the module docstring)."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self._as_postgres: list[str] = []
        owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ClusterUnavailable("running as root and there is no postgres user") from exc
            owner = (entry.pw_uid, entry.pw_gid)
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="taskdb-pg-"))
        if owner is not None:
            os.chown(self.root, *owner)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.running = False
        try:
            self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync",
                      "-E", "UTF8", "--locale=C")  # fmt: skip
        except ClusterUnavailable:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def _run(self, tool: str, *args: object) -> None:
        cmd = [*self._as_postgres, str(self.bindir / tool), *map(str, args)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise ClusterUnavailable(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n{log}"
            )

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` on this cluster (over TCP)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected, ``immediate``: as a crash)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        self._run(
            "pg_ctl", "-D", self.data, "-l", self.log, "-m", mode, "-w", "-t", "60", "restart"
        )
        self.running = True

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=5)

    def create_database(self, template: str | None = None) -> str:
        """A new database (a copy of ``template`` if given); returns its URL."""
        name = f"taskdb_p_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def destroy(self) -> None:
        """Stop the server (as a crash: nothing to keep) and remove its files."""
        if self.running:
            with contextlib.suppress(ClusterUnavailable, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster, destroyed on exit; :class:`ClusterUnavailable`
    (with the reason) when this machine cannot make one."""
    try:
        cluster = PrivateCluster()
    except OSError as exc:
        raise ClusterUnavailable(f"cannot make a PostgreSQL cluster: {exc}") from exc
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def _many_files() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(16384, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class PgBouncer:
    """``pgbouncer`` in transaction pooling mode on a free port of 127.0.0.1, in
    front of the server at ``host:port`` (every database name passes through),
    with its own ini and userlist in a temporary directory (run as ``postgres``
    when we are root: it refuses root). :class:`ClusterUnavailable` when it
    cannot start."""

    def __init__(self, host: str, port: int, user: str = "postgres") -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).is_file():
            raise ClusterUnavailable("pgbouncer is not installed (apt-get install pgbouncer)")
        self.port = free_port()
        self.user = user
        self.root = Path(tempfile.mkdtemp(prefix="taskdb-pgbouncer-"))
        (self.root / "userlist.txt").write_text(f'"{user}" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root / 'userlist.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 15000\ndefault_pool_size = 20\n"
            # the server is shared: at most 20 connections a database (tests drop theirs),
            # idle ones closed soon (max_user_connections leaked its count in 1.18 here)
            "server_idle_timeout = 2\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        cmd = [binary, str(self.root / "pgbouncer.ini")]
        if os.geteuid() == 0:
            os.chown(self.root, pwd.getpwnam("postgres").pw_uid, -1)
            for name in ("userlist.txt", "pgbouncer.ini"):
                os.chown(self.root / name, pwd.getpwnam("postgres").pw_uid, -1)
            # setpriv, not runuser: runuser's PAM session would reset the file limit
            cmd = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *cmd]
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_many_files,  # a test session leaves many client connections open
        )
        give_up = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > give_up:
                    err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                    self.close()
                    raise ClusterUnavailable(f"pgbouncer did not start: {err.strip()}") from None
                time.sleep(0.005)  # it listens within ~10 ms: once per test of three suites

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
