"""Watching a process under test from outside: its stdout lines and the ports it leaves open."""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def refused(port: int) -> bool:
    """Whether a connection to ``127.0.0.1:port`` is refused (nothing listens there)."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line ``process`` prints; fails if none comes within ``timeout`` seconds."""
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            return process.stdout.readline()
        if process.poll() is not None:
            break
    raise AssertionError(f"no line within {timeout} s (exit code {process.poll()})")


def sandbox_up(*args: str) -> subprocess.Popen[str]:
    """``python -m sandbox up ARGS...`` started from the repository, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox", "up", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
