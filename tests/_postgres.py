"""A throwaway PostgreSQL cluster for the multi-worker tests and the scale benchmark (no fixture: a context manager)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent  # e.g. /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(cands[-1]).parent if cands else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """A PostgreSQL cluster on a free loopback port (initdb into a temp dir, stopped and removed after); yields its
    URL, or ``None`` when the server binaries (initdb, pg_ctl) are not installed."""
    bindir = pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="lnas-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(base, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()

    def pg(*cmd: str) -> None:
        subprocess.run(run_as + list(cmd), check=True, capture_output=True, timeout=120)

    pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o", opts, "start")
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "lnas")
        yield f"postgresql://postgres@127.0.0.1:{port}/lnas"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
