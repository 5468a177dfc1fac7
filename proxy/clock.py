"""Time as Rampart keeps it: aware UTC datetimes, and the ISO-8601 texts its files hold.

Bottom layer: imports nothing from Rampart, so every package may use it,
``certs`` included (certificates' validity, the overlap of a retired CA) as
well as ``proxy.patterns`` and ``proxy.updates`` (a build's ``created``, a
manifest's ``published`` and ``expires``, the high-water mark).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def to_the_second(t: datetime | None = None) -> datetime:
    """``t`` (default: now) in UTC without its microseconds: what a build or a publish records."""
    return (t or utcnow()).astimezone(UTC).replace(microsecond=0)


def iso(t: datetime) -> str:
    """``t`` in ISO-8601, UTC written ``Z``: ``2026-03-01T12:00:00Z``."""
    return t.isoformat().replace("+00:00", "Z")


def stamp(t: datetime) -> str:
    """``t`` as UTC ``YYYY-MM-DDTHH:MM:SSZ``, which sorts as a string (the high-water mark's)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: object) -> datetime:
    """An ISO-8601 time (``iso``'s, or with an offset); one without a zone is taken as UTC.

    Raises ValueError for anything else.
    """
    t = datetime.fromisoformat(str(value))
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
