"""What the benchmarks share: a sandbox in a process of its own, and a process's CPU time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_sandbox(clusters: int, directory: Path, *options: str) -> subprocess.Popen[str]:
    """``python -m sandbox up --clusters N --dir DIRECTORY OPTIONS...``, once it is ready (its
    own process, so the API servers do not share the benchmark's interpreter lock)."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "sandbox", "up", "--clusters", str(clusters),
            "--dir", str(directory), *options,
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("sandbox ready"):
            return process
    raise SystemExit(f"sandbox exited with {process.wait()} before it was ready")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; 0.0 without ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
