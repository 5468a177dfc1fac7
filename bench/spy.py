"""Profiles for the bench: py-spy samples a running server while wrk loads it; top functions out.

``record`` runs ``py-spy record --format raw`` (collapsed stacks) for a number of
seconds; ``top`` reads such a file and returns the functions with the most
samples on their own (self) and anywhere on the stack (inclusive).
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

OURS = ("proxy/", "addons/", "certs/")  # inclusive figures only for Rampart's own functions
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def record(
    pid: int, seconds: float, out: Path, *, rate: int = 250, core: int | None = 1
) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``seconds``; the caller waits for the returned process."""
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
           "--format", "raw", "--nonblocking", "-o", str(out)]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _name(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``file.py:func`` (lines dropped so samples add up per function)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{short}:{m.group('func')}"


def top(raw: Path, n: int = 15) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(total samples, top self, top inclusive) from a py-spy raw (collapsed) file."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            if name.startswith(OURS):
                incl[name] += count
    return total, own.most_common(n), incl.most_common(n)


def report(raw: Path, title: str, n: int = 12) -> str:
    total, own, incl = top(raw, n)
    if not total:
        return f"--- {title}: no samples\n"
    lines = [f"--- {title}: {total} samples (busy time only)", "  self%  function"]
    lines += [f"  {100 * c / total:5.1f}  {name}" for name, c in own]
    lines += ["  incl%  function (Rampart's own, self + callees)"]
    lines += [f"  {100 * c / total:5.1f}  {name}" for name, c in incl]
    return "\n".join(lines) + "\n"
