"""First starts racing on one fresh data directory: state created once, used by every start.

The sample pattern's install is covered in test_store.py and, with real processes,
test_update_integration.py; here the appliance CA, which every start loads or creates.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from certs import ca as ca_mod
from certs.ca import CA
from tests.conftest import in_threads


def test_starts_together_create_one_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starts = 3
    together = threading.Barrier(starts, timeout=30)
    real_make_dir = ca_mod.make_private_dir

    def make_dir_when_all_have_looked(path: Path) -> None:
        together.wait()  # every start has seen no CA before any creates one
        real_make_dir(path)

    monkeypatch.setattr(ca_mod, "make_private_dir", make_dir_when_all_have_looked)
    data = tmp_path / "data"
    got, errors = in_threads(starts, lambda: CA.ensure(data).fingerprint_sha256())
    assert errors == [] and len(got) == starts and len(set(got)) == 1, (errors, got)
    assert CA.load(data).fingerprint_sha256() == got[0]  # the pair on disk matches, and is it
