"""Real processes for the end-to-end tests: a uvicorn API or a Celery worker started with
``python -m cli``, its output kept in a log file, stopped (or killed) at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUARRY = [sys.executable, "-m", "cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One process of the stack, in its own session so that ``kill`` takes its children."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.p = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.p.poll()}) ---\n" + "\n".join(lines[-n:])

    def kill(self) -> None:
        """``kill -9`` the process and everything it started (a crash, not a shutdown)."""
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=30)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=30)
        self._log.close()


def api(env: dict[str, str], log_dir: Path, name: str = "api") -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(name, [*QUARRY, "serve", "--port", str(port), "--no-migrate"], env, log_dir)
    return proc, f"http://127.0.0.1:{port}"


def worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> Proc:
    args = [*QUARRY, "worker", "--queues", "gpu,cpu", "--concurrency", "1"]
    return Proc(name, args, env, log_dir)


def wait_ready(base: str, procs: list[Proc], timeout_s: float = 180, status: int = 200) -> None:
    """Poll ``/readyz`` until it answers ``status``; fail early if a process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in procs:
            if proc.p.poll() is not None:
                raise AssertionError("process exited early\n" + proc.tail())
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == status:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("API never became ready\n" + "\n".join(p.tail() for p in procs))
        time.sleep(0.5)


def migrate(env: dict[str, str]) -> None:
    subprocess.run([*QUARRY, "db", "upgrade"], env=env, cwd=ROOT, check=True, timeout=120)
