"""The files of TLS material: ``proxy.files`` with the PEM size limit, and ``CertError`` for
what the system refuses.

Keys are written 0600 and certificates 0644 (``proxy.files.write_atomic``:
the mode is set before any byte is written, then the file is renamed into
place); a key file group or others may use is refused on read; folders holding
keys are private (``proxy.files.check_private_dir``). What the system refuses
(a missing file, a full disk) is a ``CertError`` here too, naming the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from proxy import files
from proxy.errors import CertError

MAX_PEM_BYTES = 1 << 20
"""The largest PEM file read (a CA file is a few kilobytes)."""


def read_pem(path: Path, *, private: bool = False, limit: int = MAX_PEM_BYTES) -> bytes:
    """Read ``path`` whole, refusing files over ``limit`` bytes and, with ``private``, a file
    group or others may access (``proxy.files.read_bounded``)."""
    try:
        return files.read_bounded(path, limit, private=private, error=CertError)
    except FileNotFoundError:
        raise CertError(f"{path} does not exist") from None
    except OSError as exc:
        raise CertError(f"cannot open {path}: {exc.strerror}") from None


def write_pem(path: Path, data: bytes, *, private: bool) -> None:
    """Replace ``path`` with ``data`` whole: a key (``private``) 0600, a certificate 0644."""
    try:
        files.write_atomic(path, data, mode=files.PRIVATE_FILE if private else files.PUBLIC_FILE)
    except OSError as exc:
        raise CertError(f"cannot write {path}: {exc.strerror}") from None


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents, each exactly 0700 whatever the umask; refuse an
    existing folder another user owns or may write to (they could have replaced a key in it)."""
    files.check_private_dir(path, "folder", error=CertError)


@contextlib.contextmanager
def lock_file(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (``proxy.files.locked``), e.g. while a CA is created."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(files.locked(path))
        except OSError as exc:
            raise CertError(f"cannot lock {path}: {exc.strerror}") from None
        yield
