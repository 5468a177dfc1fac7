"""Versions a publish takes when the build's was defaulted: newer every time, sorting as
strings wherever versions are compared, and still times (pattern age)."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.errors import Refused
from proxy.patterns.build import build_pattern
from proxy.patterns.layout import VERSION_NAME, version_time
from proxy.updates.publish import publish
from proxy.updates.repo_dir import read_repo
from proxy.updates.signing import keygen, load_private_key
from proxy.updates.source import check_timely, newest

T = datetime(2026, 11, 24, 0, 30, 10, tzinfo=UTC)


@pytest.mark.parametrize(("latest", "expected"), [
    (None, "2026112400"),
    ("2026112323", "2026112400"),
    ("2026112400", "202611240030"),
    ("202611240030", "20261124003010"),
    ("20261124003010", "20261124003011"),
    ("2027010100", "20270101000001"),  # a version ahead of the clock: the second after it
    ("20261124235959", "20261125000000"),
])
def test_next_version_is_newer_and_a_time(latest: str | None, expected: str) -> None:
    from proxy.patterns.layout import next_version

    got = next_version(latest, T)
    assert got == expected and VERSION_NAME.fullmatch(got)
    assert latest is None or got > latest
    assert version_time(got) is not None


def test_a_hotfix_in_the_hour_is_taken_by_an_appliance_and_not_a_downgrade(tmp_path: Path) -> None:
    keygen(tmp_path / "key")
    key = load_private_key(tmp_path / "key")
    manifests = []
    for i, at in enumerate((T, T, T + timedelta(seconds=1))):
        src = tmp_path / f"h{i}.txt"
        src.write_text("".join(f"{hashlib.sha256(f'{i}-{n}'.encode()).hexdigest()},T{i}\n"
                               for n in range(10)) + f"{'0' * 64},Kept\n")
        build_pattern(tmp_path / f"b{i}", hashes=[src], now=at)  # no version, no base
        publish(tmp_path / f"b{i}", tmp_path / "repo", key, now=at)
        manifests.append(read_repo(tmp_path / "repo", tmp_path / "key.pub"))
    versions = [m.pattern("smart-scan").version for m in manifests]
    assert versions == ["2026112400", "202611240030", "20261124003011"]
    for older, newer in itertools.pairwise(manifests):
        check_timely(newer, newest(older), T + timedelta(minutes=1), 86400)  # taken
        with pytest.raises(Refused, match="older than the installed"):
            check_timely(older, newest(newer), T + timedelta(minutes=1), 86400)
