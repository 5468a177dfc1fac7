"""walk() on a real tree: the exact entries, in order, with symlinks, loops and special files."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.client.walk import BROKEN, LOOP, OUT_OF_TREE, Found, walk

ROOT = os.geteuid() == 0


def entries(found: list[Found]) -> list[tuple[str, str | None]]:
    """(path, error) per entry; and every file's stat is its own lstat, errors have none."""
    for f in found:
        if f.error is None:
            assert f.stat is not None and stat.S_ISREG(f.stat.st_mode)
            assert (f.stat.st_dev, f.stat.st_ino) == (os.lstat(f.path).st_dev, os.lstat(f.path).st_ino)
        else:
            assert f.stat is None
    return [(str(f.path), f.error) for f in found]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A tree with every kind of entry; ``outside`` and ``tree-sibling`` are beside it."""
    t = tmp_path / "tree"
    (t / "b").mkdir(parents=True)
    (t / "z" / "deep").mkdir(parents=True)
    (t / "z" / "inner").mkdir()
    (t / "locked").mkdir()
    (t / "locked" / "hidden.txt").write_text("hidden")
    for name in ("a.txt", "b/c.txt", "z/deep/x.txt", "z/inner/y.txt", "z/w.txt"):
        (t / name).write_text(name)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    (tmp_path / "tree-sibling").mkdir()
    (tmp_path / "tree-sibling" / "s.txt").write_text("sibling")
    (t / "b" / "up").symlink_to("..")  # a loop back to an ancestor folder
    (t / "broken").symlink_to("nowhere")
    (t / "c_link").symlink_to("b/c.txt")  # to a file whose folder is already listed
    (t / "d_link").symlink_to("z/deep/x.txt")  # to a file met before its folder
    (t / "e_dirlink").symlink_to("z/inner")  # to a folder met before its place
    os.mkfifo(t / "fifo")
    (t / "loop1").symlink_to("loop2")
    (t / "loop2").symlink_to("loop1")
    (t / "out_dir").symlink_to(tmp_path / "outside")
    (t / "out_file").symlink_to("../outside/secret.txt")
    (t / "out_sibling").symlink_to("../tree-sibling/s.txt")  # shares the prefix "tree"
    (t / "zz_self").symlink_to(".")
    (t / "locked").chmod(0)
    yield t
    (t / "locked").chmod(0o700)


def expected_tree(t: str, locked: bool) -> list[tuple[str, str | None]]:
    return [
        (f"{t}/a.txt", None),
        (f"{t}/b/c.txt", None),
        (f"{t}/broken", BROKEN),
        (f"{t}/z/deep/x.txt", None),  # through d_link, at its real place
        (f"{t}/z/inner/y.txt", None),  # through e_dirlink
        (f"{t}/fifo", "fifo: not a regular file, skipped"),
        *([(f"{t}/locked", "cannot read folder: Permission denied")] if locked else
          [(f"{t}/locked/hidden.txt", None)]),
        (f"{t}/loop1", LOOP),
        (f"{t}/loop2", LOOP),
        (f"{t}/out_dir", OUT_OF_TREE),
        (f"{t}/out_file", OUT_OF_TREE),
        (f"{t}/out_sibling", OUT_OF_TREE),
        (f"{t}/z/w.txt", None),  # z/deep/x.txt and z/inner are not met twice
    ]


def test_exact_sequence(tree: Path) -> None:
    assert entries(list(walk([tree]))) == expected_tree(str(tree), locked=not ROOT)


def _walk_without_privilege(tree: Path) -> list[tuple[str, str | None]]:
    """walk([tree]) in a child that root's capabilities to read anything are taken from."""
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test this as root"
    code = ("import json, sys, pathlib\nfrom proxy.client.walk import walk\n"
            "print(json.dumps([(str(f.path), f.error) for f in walk([pathlib.Path(sys.argv[1])])]))")
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
                           sys.executable, "-c", code, str(tree)], capture_output=True, text=True,
                          timeout=60, cwd=str(Path(__file__).resolve().parents[3]))
    assert done.returncode == 0, done.stderr
    return [(path, error) for path, error in json.loads(done.stdout)]


def test_unreadable_folder_reported_and_walk_goes_on(tree: Path) -> None:
    found = _walk_without_privilege(tree) if ROOT else entries(list(walk([tree])))
    assert (f"{tree}/locked", "cannot read folder: Permission denied") in found
    assert found[-1] == (f"{tree}/z/w.txt", None)


def test_files_given_directly_and_roots_in_the_order_given(tree: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    found = entries(list(walk([secret, tree / "z", tree / "a.txt"])))
    assert found == [
        (str(secret), None),
        (f"{tree}/z/deep/x.txt", None),
        (f"{tree}/z/inner/y.txt", None),
        (f"{tree}/z/w.txt", None),
        (f"{tree}/a.txt", None),
    ]


def test_nothing_twice_for_nested_or_repeated_roots(tree: Path) -> None:
    once = entries(list(walk([tree])))
    assert entries(list(walk([tree, tree / "z", tree, tree / "a.txt"]))) == once
    # a file root inside a folder root given later is reported by that folder's walk
    assert entries(list(walk([tree / "a.txt", tree]))) == once


def test_a_symlink_given_directly_is_followed(tree: Path, tmp_path: Path) -> None:
    to_file = tmp_path / "to_file"
    to_file.symlink_to(tree / "b" / "c.txt")
    to_dir = tmp_path / "to_dir"
    to_dir.symlink_to(tree / "z")
    found = entries(list(walk([to_file, to_dir])))
    assert found == [
        (f"{tree}/b/c.txt", None),  # its real place: hash_file refuses a symlink
        (f"{to_dir}/deep/x.txt", None),  # a folder's files under the name given
        (f"{to_dir}/inner/y.txt", None),
        (f"{to_dir}/w.txt", None),
    ]


def test_a_link_to_a_file_given_as_another_root_is_not_out_of_the_tree(tree: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    found = entries(list(walk([tree / "z", secret])))
    assert (str(secret), None) in found
    found = entries(list(walk([tree, tmp_path / "outside"])))
    assert found.count((f"{tree}/out_dir", OUT_OF_TREE)) == 0
    assert found.count((f"{tmp_path}/outside/secret.txt", None)) == 1


def test_bad_roots_are_reported_not_raised(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    dangling = tmp_path / "dangling"
    dangling.symlink_to("nowhere")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        found = entries(list(walk([missing, dangling, fifo, sock_path])))
    assert found == [
        (str(missing), "cannot read: No such file or directory"),
        (str(dangling), BROKEN),
        (str(fifo), "fifo: not a regular file, skipped"),
        (str(sock_path), "socket: not a regular file, skipped"),
    ]


def test_hard_links_are_each_reported(tmp_path: Path) -> None:
    (tmp_path / "one").write_text("same")
    os.link(tmp_path / "one", tmp_path / "two")
    assert entries(list(walk([tmp_path]))) == [(f"{tmp_path}/one", None), (f"{tmp_path}/two", None)]


def test_deep_tree_needs_no_recursion(tmp_path: Path) -> None:
    path = tmp_path
    for _ in range(300):  # deeper than a recursive walk would like, shorter than PATH_MAX
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf.txt").write_text("leaf")
    assert entries(list(walk([tmp_path]))) == [(str(path / "leaf.txt"), None)]


def test_a_path_with_a_nul_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("ok")
    found = entries(list(walk([Path("bad\0name"), tmp_path])))
    assert found == [("bad\0name", "cannot read: embedded null byte"), (f"{tmp_path}/ok.txt", None)]


def test_relative_roots_keep_the_name_given(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree.parent)
    found = [(str(f.path), f.error) for f in walk([Path("tree/z"), Path("./tree/a.txt")])]
    assert found == [("tree/z/deep/x.txt", None), ("tree/z/inner/y.txt", None), ("tree/z/w.txt", None),
                     ("tree/a.txt", None)]
