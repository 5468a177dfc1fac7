"""Writing files so that a reader never sees half of one: temporary file, fsync, rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _replace_with(dst: Path, fill: Callable[[BinaryIO], object]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(dst: Path, data: bytes) -> None:
    """``dst`` holds ``data`` whole, or is left as it was."""
    _replace_with(dst, lambda out: out.write(data))


def copy_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` whole, or is left as it was."""

    def fill(out: BinaryIO) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    _replace_with(dst, fill)
