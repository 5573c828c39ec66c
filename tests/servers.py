"""Services a test starts as separate processes (job service, worker pool, dask cluster).

Each runs in its own session on a free localhost port and is stopped, its children
included, whatever the test does.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def this_environment() -> dict:
    """os.environ with this interpreter's folder first on PATH.

    Worker pools start SDK workers as ``python`` from PATH: it must be this environment's.
    """
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port} after {timeout} s")


@contextlib.contextmanager
def running(services: dict[str, tuple[list[str], int]], logs: Path, env: dict | None = None):
    """Start ``{name: (python arguments, port)}``; wait until each listens; stop all after.

    Yields ``{name: Popen}``.
    """
    procs = []
    try:
        for name, (args, port) in services.items():
            with open(logs / f"{name}.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, *args], stdout=log, stderr=log,
                                              env=env or this_environment(), start_new_session=True))
            wait_for_port(port, procs[-1])
        yield dict(zip(services, procs))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """The process ids a process started (from /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


@contextlib.contextmanager
def portable_runner(logs: Path, env: dict | None = None):
    """Beam's Python job service and an EXTERNAL worker pool (what Flink, Spark and Dataflow
    Runner v2 workers speak); yields (the processes by name, ``vigil score``'s Beam flags)."""
    job_port, pool_port = free_port(), free_port()
    with running({"jobs": (["-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", str(job_port)], job_port),
                  "pool": (["-m", "apache_beam.runners.worker.worker_pool_main",
                            "--service_port", str(pool_port)], pool_port)}, logs, env) as procs:
        # The workers run on this host and see its files.
        yield procs, ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}",
                      "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool_port}",
                      "--workers-see-local-paths"]
