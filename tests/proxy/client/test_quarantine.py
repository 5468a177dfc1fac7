"""The quarantine with real files: what a user finds after a scan moved a malicious file
away, and after they restored it."""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.client.digests import Digests
from proxy.client.errors import ClientError
from proxy.client.quarantine import Quarantine, QuarantineRecord
from proxy.client.state import ClientState

EICAR_TEXT = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR = Digests("275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f",
                "3395856ce81f2b7382dee72602f798b642f14140", "44d88612fea8a8f36de82e1278abb02f")
THREAT = "Eicar-Test-Signature"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ClientState]:
    with ClientState.open(tmp_path / "state") as s:
        yield s


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def sample(path: Path, file_mode: int = 0o755, data: bytes = EICAR_TEXT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(file_mode)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_700_000_000_000_000_000))
    return path


def cross_device(calls: list[tuple[Path, Path]]) -> object:
    """A rename that fails as it does between two file systems."""
    def rename(src: Path, dst: Path) -> None:
        calls.append((src, dst))
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    return rename


def test_put_moves_the_file_away_private_and_not_executable(tmp_path: Path, state: ClientState) -> None:
    src = sample(tmp_path / "home" / "u" / "dl" / "setup.exe")
    old = os.umask(0)
    try:
        q = Quarantine(state, tmp_path / "q" / "files", clock=lambda: 1_800_000_000.0)
        rec = q.put(src, EICAR, THREAT)
    finally:
        os.umask(old)
    stored = tmp_path / "q" / "files" / rec.id
    assert not src.exists()
    assert stored.read_bytes() == EICAR_TEXT
    assert mode(stored) == 0o600 and mode(tmp_path / "q" / "files") == mode(tmp_path / "q") == 0o700
    assert len(rec.id) == 16 and int(rec.id, 16) >= 0
    assert rec == QuarantineRecord(id=rec.id, path=str(src), stored=str(stored), digests=EICAR, threat=THREAT,
                                   at=1_800_000_000.0, size=len(EICAR_TEXT), mode=0o755)


def test_records_survive_a_restart_and_ids_differ(tmp_path: Path) -> None:
    with ClientState.open(tmp_path / "state") as s:
        q = Quarantine(s, tmp_path / "q")
        ids = [q.put(sample(tmp_path / f"f{i}"), EICAR, THREAT).id for i in range(3)]
    assert len(set(ids)) == 3
    with ClientState.open(tmp_path / "state") as s:
        listed = Quarantine(s, tmp_path / "elsewhere").list()
    assert [r.id for r in listed] == ids
    assert [r.path for r in listed] == [str(tmp_path / f"f{i}") for i in range(3)]


def test_restore_puts_back_content_and_mode_forgets_the_record(tmp_path: Path, state: ClientState) -> None:
    src = sample(tmp_path / "bin" / "tool", 0o750)
    q = Quarantine(state, tmp_path / "q")
    rec = q.put(src, EICAR, THREAT)
    assert q.restore(rec.id) == src
    assert src.read_bytes() == EICAR_TEXT and mode(src) == 0o750
    assert q.list() == [] and not (tmp_path / "q" / rec.id).exists()


def test_restore_refuses_an_existing_target_unless_asked(tmp_path: Path, state: ClientState) -> None:
    src = sample(tmp_path / "a.exe", 0o644)
    q = Quarantine(state, tmp_path / "q")
    rec = q.put(src, EICAR, THREAT)
    src.write_bytes(b"a new file of the same name")
    with pytest.raises(ClientError, match=re.escape(f"cannot restore {rec.id}: {src} exists")):
        q.restore(rec.id)
    assert src.read_bytes() == b"a new file of the same name" and q.present(rec)
    q.restore(rec.id, overwrite=True)
    assert src.read_bytes() == EICAR_TEXT and mode(src) == 0o644


def test_restore_to_another_folder_or_name(tmp_path: Path, state: ClientState) -> None:
    q = Quarantine(state, tmp_path / "q")
    one = q.put(sample(tmp_path / "x" / "one.exe"), EICAR, THREAT)
    two = q.put(sample(tmp_path / "x" / "two.exe"), EICAR, THREAT)
    (tmp_path / "review").mkdir()
    assert q.restore(one.id, to=tmp_path / "review") == tmp_path / "review" / "one.exe"
    renamed = tmp_path / "new" / "deeper" / "renamed"
    assert q.restore(two.id, to=renamed) == renamed
    assert (tmp_path / "new" / "deeper" / "renamed").read_bytes() == EICAR_TEXT
    assert not (tmp_path / "x" / "one.exe").exists()


def test_restore_never_replaces_a_folder(tmp_path: Path, state: ClientState) -> None:
    src = sample(tmp_path / "a")
    q = Quarantine(state, tmp_path / "q")
    rec = q.put(src, EICAR, THREAT)
    src.mkdir()
    with pytest.raises(ClientError, match="a folder is there"):
        q.restore(rec.id, overwrite=True)


def test_an_unknown_or_malformed_id_is_named(tmp_path: Path, state: ClientState) -> None:
    q = Quarantine(state, tmp_path / "q")
    with pytest.raises(ClientError, match="no quarantine record 00000000deadbeef"):
        q.restore("00000000deadbeef")
    with pytest.raises(ClientError, match=r"'\.\./etc' is not a quarantine record id"):
        q.restore("../etc")


def test_a_record_whose_file_vanished_is_reported_then_deleted(tmp_path: Path, state: ClientState) -> None:
    src = sample(tmp_path / "gone.exe")
    q = Quarantine(state, tmp_path / "q")
    rec = q.put(src, EICAR, THREAT)
    os.unlink(rec.stored)
    assert not q.present(rec)
    with pytest.raises(ClientError, match=re.escape(f"{rec.id} ({src}): its file {rec.stored} is missing")):
        q.restore(rec.id)
    assert not src.exists() and q.list() == [rec]
    assert q.delete(rec.id) == rec and q.list() == []


def test_a_quarantined_file_changed_meanwhile_is_not_restored(tmp_path: Path, state: ClientState) -> None:
    q = Quarantine(state, tmp_path / "q")
    rec = q.put(sample(tmp_path / "a.exe"), EICAR, THREAT)
    Path(rec.stored).write_bytes(b"something else entirely")
    with pytest.raises(ClientError, match="has changed since it was quarantined"):
        q.restore(rec.id)
    assert not (tmp_path / "a.exe").exists()


def test_delete_removes_file_and_record(tmp_path: Path, state: ClientState) -> None:
    q = Quarantine(state, tmp_path / "q")
    rec = q.put(sample(tmp_path / "a.exe"), EICAR, THREAT)
    q.delete(rec.id)
    assert list((tmp_path / "q").iterdir()) == [] and state.quarantine_record(rec.id) is None


def test_across_devices_the_file_is_copied_then_unlinked(tmp_path: Path, state: ClientState) -> None:
    src = sample(tmp_path / "home" / "a.exe", 0o755)
    calls: list[tuple[Path, Path]] = []
    q = Quarantine(state, tmp_path / "q", rename=cross_device(calls))  # type: ignore[arg-type]
    rec = q.put(src, EICAR, THREAT)
    stored = Path(rec.stored)
    assert calls == [(src, stored)]
    assert not src.exists() and stored.read_bytes() == EICAR_TEXT and mode(stored) == 0o600
    assert os.stat(stored).st_mtime_ns == 1_700_000_000_000_000_000
    assert [p.name for p in (tmp_path / "q").iterdir()] == [rec.id]  # no temporary file left
    assert q.restore(rec.id) == src
    assert src.read_bytes() == EICAR_TEXT and mode(src) == 0o755 and not stored.exists()
    assert os.stat(src).st_mtime_ns == 1_700_000_000_000_000_000


def test_a_real_second_file_system_when_there_is_one(tmp_path: Path, state: ClientState) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev or not os.access(shm, os.W_OK):
        pytest.skip("no second writable file system here")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        src = sample(Path(other) / "a.exe", 0o700)
        q = Quarantine(state, tmp_path / "q")
        rec = q.put(src, EICAR, THREAT)
        assert not src.exists() and mode(rec.stored) == 0o600
        q.restore(rec.id)
        assert src.read_bytes() == EICAR_TEXT and mode(src) == 0o700


def test_a_failed_move_leaves_the_file_and_no_record(tmp_path: Path, state: ClientState) -> None:
    def refuse(src: Path, dst: Path) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    src = sample(tmp_path / "a.exe")
    q = Quarantine(state, tmp_path / "q", rename=refuse)
    message = f"{src}: cannot move it into the quarantine: Permission denied"
    with pytest.raises(ClientError, match=re.escape(message)):
        q.put(src, EICAR, THREAT)
    assert src.read_bytes() == EICAR_TEXT and q.list() == []


def test_only_regular_files_are_quarantined(tmp_path: Path, state: ClientState) -> None:
    target = sample(tmp_path / "real.exe")
    (tmp_path / "link.exe").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    q = Quarantine(state, tmp_path / "q")
    for name in ("link.exe", "fifo"):
        with pytest.raises(ClientError, match="is not a regular file; not quarantined"):
            q.put(tmp_path / name, EICAR, THREAT)
    with pytest.raises(ClientError, match="cannot quarantine: No such file"):
        q.put(tmp_path / "missing", EICAR, THREAT)
    assert (tmp_path / "link.exe").is_symlink() and target.exists() and q.list() == []


def test_a_quarantine_folder_others_may_write_to_is_refused(tmp_path: Path, state: ClientState) -> None:
    folder = tmp_path / "q"
    folder.mkdir()
    folder.chmod(0o777)
    src = sample(tmp_path / "a.exe")
    with pytest.raises(ClientError, match=r"quarantine folder .* is writable by"):
        Quarantine(state, folder).put(src, EICAR, THREAT)
    assert src.exists()


def test_list_here_only(tmp_path: Path, state: ClientState) -> None:
    a = Quarantine(state, tmp_path / "qa").put(sample(tmp_path / "1"), EICAR, THREAT)
    b = Quarantine(state, tmp_path / "qb").put(sample(tmp_path / "2"), EICAR, THREAT)
    assert Quarantine(state, tmp_path / "qb").list(here_only=True) == [b]
    assert Quarantine(state, tmp_path / "qb").list() == [a, b]
