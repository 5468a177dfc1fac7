"""A pattern directory holding a table as base + overlay: opened, checked, refused when wrong."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from proxy.errors import PatternError
from proxy.model import FileQuery, HashKind
from proxy.patterns.build import build_pattern
from proxy.patterns.layout import FileSpec
from proxy.patterns.overlays import OVERLAYS, Overlay, compact, overlays_json
from proxy.patterns.pattern import PatternSet, pattern_info
from proxy.patterns.table_diff import make_table_diff
from proxy.patterns.table_overlay import OverlaidTable

F = "file-sha256.tbl"


def _digests(n: int, seed: str) -> list[str]:
    return [hashlib.sha256(f"{seed}{i}".encode()).hexdigest() for i in range(n)]


def _build(root: Path, name: str, hashes: list[str]) -> Path:
    src = root / f"{name}.txt"
    src.write_text("".join(f"{h},Some-Threat\n" for h in hashes))
    build_pattern(root / name, hashes=[src], version="2026010100")
    return root / name


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(old build, new build, the new one held as the old table + an overlay)."""
    old_h = _digests(50, "a")
    new_h = old_h[7:] + _digests(9, "b")
    old, new = _build(tmp_path, "old", old_h), _build(tmp_path, "new", new_h)
    held = tmp_path / "held"
    shutil.copytree(new, held)
    os.unlink(held / F)
    os.link(old / F, held / f"{F}.base")
    diff = make_table_diff(old / F, new / F)
    (held / f"{F}.overlay").write_bytes(diff)
    raw = json.loads((held / "manifest.json").read_text())
    raw[OVERLAYS] = overlays_json({F: Overlay.of(F, FileSpec.of(old / F), FileSpec.of(
        held / f"{F}.overlay"))})
    (held / "manifest.json").write_text(json.dumps(raw))
    return old, new, held


def _answers(directory: Path) -> list[object]:
    qs = [FileQuery(HashKind.SHA256, bytes.fromhex(h)) for h in _digests(50, "a") + _digests(9, "b")]
    with PatternSet.open(directory, verify=True) as ps:
        assert ps.lookup_files(qs) == [ps.lookup_file(q) for q in qs]
        return [ps.lookup_file(q) for q in qs]


def test_an_overlaid_table_opens_and_answers_as_the_full_one(pair) -> None:
    _, new, held = pair
    with PatternSet.open(held) as ps:
        assert isinstance(ps.table(F), OverlaidTable)
        assert ps.info()["tables"][F]["entries"] == 52
    assert _answers(held) == _answers(new)
    assert pattern_info(held)["problems"] == []
    assert compact(held, F, FileSpec.of(new / F))
    assert (held / F).read_bytes() == (new / F).read_bytes()
    assert not compact(held, F, FileSpec.of(new / F))  # there already


def test_a_compaction_that_does_not_match_is_deleted(pair) -> None:
    old, _, held = pair
    with pytest.raises(PatternError, match="does not match") as e:
        compact(held, F, FileSpec.of(old / F))
    assert e.value.reason == "digest_mismatch" and not (held / F).exists()


def test_a_bad_overlay_record_is_named(pair) -> None:
    _, _, held = pair
    raw = json.loads((held / "manifest.json").read_text())
    raw[OVERLAYS][F] = {"base": raw[OVERLAYS][F]["base"]}
    (held / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PatternError, match="overlays"):
        PatternSet.open(held)


def test_a_damaged_part_is_refused(pair) -> None:
    _, _, held = pair
    part = held / f"{F}.overlay"
    data = bytearray(part.read_bytes())
    data[150] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(PatternError, match="SHA-256"):
        PatternSet.open(held, verify=True)
    part.write_bytes(bytes(data[:-3]))
    assert any("overlay" in p for p in pattern_info(held)["problems"])
    os.unlink(held / f"{F}.base")
    with pytest.raises(PatternError, match="base"):
        PatternSet.open(held, verify=False)
