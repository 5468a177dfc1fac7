"""The client's state file: what a scan finds again after a restart, what survives a bad
file, and that nothing in it is readable by other users whatever the umask."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.client.digests import Digests
from proxy.client.errors import ClientError
from proxy.client.state import ClientState, Limits, QuarantineRecord
from proxy.client.state_file import MAX_ANSWER_BYTES, SCHEMA_VERSION

SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
SHA1 = "3395856ce81f2b7382dee72602f798b642f14140"
MD5 = "44d88612fea8a8f36de82e1278abb02f"
EICAR = Digests(SHA256, SHA1, MD5)
NOW = 1_800_000_000.0


def h(i: int) -> tuple[str, str]:
    return ("sha256", f"{i:064x}")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ClientState]:
    with ClientState.open(tmp_path / "state") as s:
        yield s


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------- answers


def test_answers_round_trip_and_survive_a_restart(tmp_path: Path) -> None:
    web = ("url", "http://example.com/a?b=1")
    with ClientState.open(tmp_path) as s:
        s.put_answers([(h(1), {"verdict": "malicious", "threat": "Eicar"}, NOW + 60),
                       (web, {"rating": 71}, NOW + 60)])
        assert s.answer_count() == 2
    with ClientState.open(tmp_path) as s:
        got = s.get_answers([h(1), web, h(2), h(1)], NOW)
    assert got == {h(1): {"verdict": "malicious", "threat": "Eicar"}, web: {"rating": 71}}


def test_an_answer_put_again_replaces_the_old_one(state: ClientState) -> None:
    state.put_answers([(h(1), {"v": 1}, NOW + 10)])
    state.put_answers([(h(1), {"v": 2}, NOW + 20)])
    assert state.get_answers([h(1)], NOW + 15) == {h(1): {"v": 2}}
    assert state.answer_count() == 1


def test_an_expired_answer_is_not_returned_and_prune_drops_it(state: ClientState) -> None:
    state.put_answers([(h(1), {"v": 1}, NOW + 10), (h(2), {"v": 2}, NOW + 100)])
    assert set(state.get_answers([h(1), h(2)], NOW + 9)) == {h(1), h(2)}
    assert set(state.get_answers([h(1), h(2)], NOW + 10)) == {h(2)}
    assert state.prune(NOW + 10) == 1
    assert state.answer_count() == 1


def test_many_keys_are_looked_up_in_one_call(state: ClientState) -> None:
    state.put_answers([(h(i), {"i": i}, NOW + 60) for i in range(0, 3000, 2)])
    got = state.get_answers([h(i) for i in range(3000)], NOW)
    assert len(got) == 1500 and got[h(2998)] == {"i": 2998}


def test_answers_beyond_the_bound_drop_those_expiring_soonest(tmp_path: Path) -> None:
    with ClientState.open(tmp_path, limits=Limits(answers=3)) as s:
        s.put_answers([(h(i), {"i": i}, NOW + 100 - i) for i in range(5)])
        assert s.answer_count() == 3
        assert set(s.get_answers([h(i) for i in range(5)], NOW)) == {h(0), h(1), h(2)}


@pytest.mark.parametrize("answer, message", [
    ({"big": "x" * MAX_ANSWER_BYTES}, "at most 16384"),
    (["not", "an", "object"], "not a JSON object"),
    ({"nan": float("nan")}, "cannot be stored as JSON"),
])
def test_an_answer_that_cannot_be_cached_is_refused(state: ClientState, answer: object, message: str) -> None:
    with pytest.raises(ClientError, match=message):
        state.put_answers([(h(1), answer, NOW + 10)])  # type: ignore[list-item]
    assert state.answer_count() == 0


@pytest.mark.parametrize("key, message", [
    (("SHA256", "ab"), "kind 'SHA256'"), (("url", ""), "1..8192"), (("url", "u" * 8193), "1..8192")])
def test_a_bad_key_is_refused(state: ClientState, key: tuple[str, str], message: str) -> None:
    with pytest.raises(ClientError, match=message):
        state.get_answers([key], NOW)


def test_a_non_finite_expiry_is_refused(state: ClientState) -> None:
    with pytest.raises(ClientError, match="expires_at inf"):
        state.put_answers([(h(1), {}, float("inf"))])


# ---------------------------------------------------------------- file index


def test_an_unchanged_file_is_known_and_a_changed_one_is_not(state: ClientState) -> None:
    state.remember_file("/data/a.exe", 68, 1_700_000_000_123_456_789, EICAR)
    assert state.known_file("/data/a.exe", 68, 1_700_000_000_123_456_789, ["sha256", "md5"]) == EICAR
    assert state.known_file("/data/a.exe", 68, 1_700_000_000_123_456_790, ["sha256"]) is None
    assert state.known_file("/data/a.exe", 69, 1_700_000_000_123_456_789, ["sha256"]) is None
    assert state.known_file("/data/b.exe", 68, 1_700_000_000_123_456_789, ["sha256"]) is None


def test_a_kind_not_stored_means_hashing_again_and_kinds_add_up(state: ClientState) -> None:
    state.remember_file("/a", 1, 5, Digests(SHA256))
    assert state.known_file("/a", 1, 5, ["sha256", "sha1"]) is None
    state.remember_file("/a", 1, 5, Digests(SHA256, sha1=SHA1))
    state.remember_file("/a", 1, 5, Digests(SHA256, md5=MD5))  # same file: SHA-1 kept
    assert state.known_file("/a", 1, 5, ["sha1", "md5"]) == EICAR
    state.remember_file("/a", 2, 6, Digests("0" * 64))  # the file changed: old kinds dropped
    assert state.known_file("/a", 2, 6, ["sha256"]) == Digests("0" * 64)
    assert state.known_file("/a", 2, 6, ["sha1"]) is None


def test_the_file_index_drops_the_oldest_remembered_beyond_its_bound(tmp_path: Path) -> None:
    with ClientState.open(tmp_path, limits=Limits(files=2)) as s:
        for name in ("/1", "/2", "/3"):
            s.remember_file(name, 1, 1, Digests(SHA256))
        s.remember_file("/2", 1, 1, Digests(SHA256))  # seen again: now the newest
        s.remember_file("/4", 1, 1, Digests(SHA256))
        assert s.file_count() == 2
        assert [n for n in ("/1", "/2", "/3", "/4") if s.known_file(n, 1, 1, ["sha256"])] == ["/2", "/4"]


def test_a_batch_is_remembered_together(state: ClientState) -> None:
    state.remember_files([(f"/d/{i}", i, i * 7, Digests(f"{i:064x}")) for i in range(500)])
    assert state.file_count() == 500
    assert state.known_file("/d/499", 499, 3493, ["sha256"]) == Digests(f"{499:064x}")
    assert state.known_file("/d/499", 1 << 64, 3493, ["sha256"]) is None
    with pytest.raises(ClientError, match="out of range"):
        state.remember_files([("/ok", 1, 1, Digests(SHA256)), ("/big", 1 << 64, 1, Digests(SHA256))])
    assert state.known_file("/ok", 1, 1, ["sha256"]) is None  # nothing of a refused batch is kept


@pytest.mark.parametrize("digests, message", [
    (Digests(SHA256.upper()), "sha256 digest"), (Digests(SHA256[:-1]), "64 lower-case hex"),
    (Digests(SHA256, sha1="xyz"), "sha1 digest 'xyz'")])
def test_digests_that_are_not_hex_of_their_length_are_refused(
        state: ClientState, digests: Digests, message: str) -> None:
    with pytest.raises(ClientError, match=message):
        state.remember_file("/a", 1, 1, digests)


# ---------------------------------------------------------------- flags, quarantine records, meta


def test_flags_round_trip_clear_and_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    odd = os.fsdecode(b"/data/caf\xe9.exe")
    with ClientState.open(tmp_path) as s:
        s.flag(odd, EICAR, "no server answered", NOW)
        s.flag("/data/b", Digests(SHA256), "no server answered", NOW - 5)
        s.flag("/data/b", Digests(SHA256), "still none", NOW + 5)  # flagged again: updated
    with ClientState.open(tmp_path) as s:
        flags = s.flags()
        assert [(f.path, f.digests, f.reason, f.at) for f in flags] == [
            (odd, EICAR, "no server answered", NOW), ("/data/b", Digests(SHA256), "still none", NOW + 5)]
        assert os.fsencode(flags[0].path) == b"/data/caf\xe9.exe"
        assert s.clear_flag(odd) and not s.clear_flag(odd)
        assert s.flag_count() == 1


def test_flags_beyond_the_bound_are_refused_not_dropped(tmp_path: Path) -> None:
    with ClientState.open(tmp_path, limits=Limits(flags=2)) as s:
        s.flag("/1", EICAR, "offline", NOW)
        s.flag("/2", EICAR, "offline", NOW)
        s.flag("/2", EICAR, "offline again", NOW)  # an update is not a new flag
        with pytest.raises(ClientError, match="holds 2 flagged files; run rampart client rescan"):
            s.flag("/3", EICAR, "offline", NOW)
        assert [f.path for f in s.flags()] == ["/1", "/2"]


def record(id: str = "0123456789abcdef", **kw: object) -> QuarantineRecord:
    fields: dict[str, object] = dict(id=id, path="/home/u/a.exe", stored=f"/q/{id}", digests=EICAR,
                                     threat="Eicar-Test-Signature", at=NOW, size=68, mode=0o755)
    return QuarantineRecord(**{**fields, **kw})  # type: ignore[arg-type]


def test_quarantine_records_round_trip(state: ClientState) -> None:
    state.add_quarantine(record())
    state.add_quarantine(record("fedcba9876543210", at=NOW + 1))
    assert state.quarantine_record("0123456789abcdef") == record()
    assert [r.id for r in state.quarantine_records()] == ["0123456789abcdef", "fedcba9876543210"]
    assert state.remove_quarantine("0123456789abcdef") and not state.remove_quarantine("0123456789abcdef")
    assert state.quarantine_record("0123456789abcdef") is None


def test_quarantine_records_are_bounded_and_ids_checked(tmp_path: Path) -> None:
    with ClientState.open(tmp_path, limits=Limits(quarantine=1)) as s:
        s.add_quarantine(record())
        with pytest.raises(ClientError, match="holds 1 quarantine records"):
            s.add_quarantine(record("fedcba9876543210"))
        with pytest.raises(ClientError, match="not 16 hex digits"):
            s.add_quarantine(record("../../etc/passwd"))


def test_meta_round_trip_and_bounds(tmp_path: Path) -> None:
    with ClientState.open(tmp_path, limits=Limits(meta=2)) as s:
        assert s.get_meta("agent.etag") is None
        s.set_meta("agent.etag", '"v1"')
        s.set_meta("agent.etag", '"v2"')
        s.set_meta("location", "inside")
        with pytest.raises(ClientError, match="holds 2 meta keys"):
            s.set_meta("last_server", "https://a")
        with pytest.raises(ClientError, match="meta key 'a b'"):
            s.set_meta("a b", "x")
        with pytest.raises(ClientError, match="at most 65536"):
            s.set_meta("location", "x" * 65537)
    with ClientState.open(tmp_path) as s:
        assert (s.get_meta("agent.etag"), s.get_meta("location")) == ('"v2"', "inside")


# ---------------------------------------------------------------- a bad file, a newer one


def make_truncated(path: Path) -> None:
    with ClientState.open(path.parent) as s:
        s.put_answers([(h(i), {"pad": "x" * 300}, NOW + 60) for i in range(3000)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


def make_wrong_columns(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE answers (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.commit()
    conn.close()


def moved_aside(folder: Path) -> list[Path]:
    """The state files moved aside (not their -wal/-shm)."""
    return sorted(p for p in folder.glob("client.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm")))


@pytest.mark.parametrize("spoil", [
    lambda p: p.write_bytes(b"this is not a database, just text\n" * 200),
    make_truncated, make_foreign, make_wrong_columns,
], ids=["garbage", "truncated", "other-tables", "wrong-columns"])
def test_a_bad_file_is_moved_aside_with_a_warning_and_rebuilt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: object) -> None:
    path = tmp_path / "client.sqlite"
    spoil(path)  # type: ignore[operator]
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="proxy.client.state"), ClientState.open(tmp_path) as s:
        s.put_answers([(h(1), {"v": 1}, NOW + 60)])
        assert s.get_answers([h(1)], NOW) == {h(1): {"v": 1}}
    asides = moved_aside(tmp_path)
    assert len(asides) == 1 and asides[0].read_bytes() == before
    assert mode(asides[0]) == 0o600
    message = caplog.records[-1].getMessage()
    assert str(path) in message and str(asides[0]) in message and "moved aside" in message


def test_a_stale_wal_is_moved_aside_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "client.sqlite"
    path.write_bytes(b"garbage" * 100)
    (tmp_path / "client.sqlite-wal").write_bytes(b"old wal" * 100)
    with ClientState.open(tmp_path) as s:
        assert s.answer_count() == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    aside = next(n for n in names if n.startswith("client.sqlite.corrupt-") and not n.endswith("-wal"))
    assert f"{aside}-wal" in names
    assert (tmp_path / f"{aside}-wal").read_bytes() == b"old wal" * 100


def test_two_bad_files_in_a_row_are_both_kept(tmp_path: Path) -> None:
    for text in (b"first" * 100, b"second" * 100):
        (tmp_path / "client.sqlite").write_bytes(text)
        ClientState.open(tmp_path).close()
    kept = {p.read_bytes() for p in moved_aside(tmp_path)}
    assert kept == {b"first" * 100, b"second" * 100}


def test_a_newer_clients_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "client.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ClientError, match=r"made by a newer rampart client \(schema 2; this one reads 1\)"):
        ClientState.open(tmp_path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*corrupt*"))


# ---------------------------------------------------------------- modes, sharing


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_the_folder_is_0700_and_the_files_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with ClientState.open(tmp_path / "deep" / "state") as s:
            s.put_answers([(h(1), {}, NOW)])
            names = sorted(p.name for p in (tmp_path / "deep" / "state").iterdir())
            modes = {n: mode(tmp_path / "deep" / "state" / n) for n in names}
    finally:
        os.umask(old)
    assert names == ["client.sqlite", "client.sqlite-shm", "client.sqlite-wal"]
    assert set(modes.values()) == {0o600}
    assert mode(tmp_path / "deep") == mode(tmp_path / "deep" / "state") == 0o700


def test_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(ClientError, match="writable by its group and other users"):
        ClientState.open(folder)


def test_two_states_on_one_folder_see_each_others_writes(tmp_path: Path) -> None:
    with ClientState.open(tmp_path) as a, ClientState.open(tmp_path) as b:
        a.put_answers([(h(1), {"from": "a"}, NOW + 60)])
        b.flag("/x", EICAR, "offline", NOW)
        assert b.get_answers([h(1)], NOW) == {h(1): {"from": "a"}}
        assert [f.path for f in a.flags()] == ["/x"]


def test_another_process_sees_the_writes(tmp_path: Path) -> None:
    with ClientState.open(tmp_path) as s:
        s.set_meta("location", "outside")
        code = ("import sys; from pathlib import Path; from proxy.client.state import ClientState\n"
                "s = ClientState.open(Path(sys.argv[1])); print(s.get_meta('location'))\n"
                "s.set_meta('last_server', 'https://b.example'); s.close()")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parents[3])
        assert out.stdout.strip() == "outside"
        assert s.get_meta("last_server") == "https://b.example"


def test_threads_share_one_state(state: ClientState) -> None:
    import threading

    def work(n: int) -> None:
        for i in range(50):
            state.put_answers([(h(n * 1000 + i), {"n": n}, NOW + 60)])
            state.get_answers([h(n * 1000 + i)], NOW)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state.answer_count() == 200
