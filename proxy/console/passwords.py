"""Passwords stored as salted scrypt, the parameters recorded with each hash.

A stored hash reads ``scrypt$n=32768,r=8,p=1$SALT$HASH`` (base64): the parameters
travel with it, so they can be raised later and old hashes still verify (and are
rehashed at the next login, ``needs_rehash``). Comparison is constant time, and
``verify_unknown`` spends the same work for a user that does not exist, so timing
does not tell which names do.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from proxy.console.errors import BadInput


@dataclass(frozen=True, slots=True)
class Cost:
    """scrypt's parameters: CPU/memory cost ``n`` (a power of 2), block size ``r``, parallelism ``p``."""

    n: int
    r: int
    p: int


CURRENT = Cost(2**15, 8, 1)
"""What new hashes get: 32 MiB and about 0.1 s each (OWASP's scrypt minimum is N=2**17 at r=8
with 128 MiB; 2**15 keeps a small appliance responsive under a login burst). Raising it
here makes every older hash be replaced at its user's next login."""
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 12
MAX_LENGTH = 1024
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16  # a stored hash never makes us spend more than this
_B64 = r"([A-Za-z0-9+/=]{1,128})"
_FORM = re.compile(r"scrypt\$n=(\d{1,8}),r=(\d{1,3}),p=(\d{1,3})\$" + _B64 + r"\$" + _B64)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=128 * r * (n + p + 2) + 65536, dklen=KEY_BYTES)


def hash_password(password: str, cost: Cost | None = None) -> str:
    """A new salted hash of ``password`` with its parameters (default ``CURRENT``)."""
    c = cost or CURRENT
    salt = os.urandom(SALT_BYTES)
    return f"scrypt$n={c.n},r={c.r},p={c.p}${_b64(salt)}${_b64(_derive(password, salt, c.n, c.r, c.p))}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    m = _FORM.fullmatch(encoded)
    if m is None:
        return None
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return None
    try:
        return n, r, p, base64.b64decode(m[4], validate=True), base64.b64decode(m[5], validate=True)
    except binascii.Error:
        return None


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the stored hash; False for a malformed hash too."""
    parsed = _parse(encoded)
    if parsed is None:
        return False
    n, r, p, salt, want = parsed
    return hmac.compare_digest(_derive(password, salt, n, r, p), want)


@functools.cache
def _dummy(cost: Cost) -> str:
    return hash_password("not a password of anyone", cost)


def verify_unknown(password: str) -> bool:
    """The work of one verification, for a user that does not exist; always False."""
    verify_password(password, _dummy(CURRENT))
    return False


def needs_rehash(encoded: str) -> bool:
    """Whether a stored hash is weaker than the current parameters (or unreadable)."""
    parsed = _parse(encoded)
    return parsed is None or parsed[0] < CURRENT.n or parsed[1] < CURRENT.r


def check_new_password(password: object, field: str = "password") -> str:
    """A password fit to be set: text of MIN_LENGTH to MAX_LENGTH characters, else BadInput."""
    if not isinstance(password, str):
        raise BadInput(field, "must be text")
    if len(password) < MIN_LENGTH:
        raise BadInput(field, f"too short: at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise BadInput(field, f"too long: at most {MAX_LENGTH} characters")
    if "\x00" in password:
        raise BadInput(field, "must not contain a NUL character")
    return password
