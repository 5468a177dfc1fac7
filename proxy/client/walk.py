"""The files a scan covers: paths given and folders' contents, in a stable order, never
leaving the tree given and never raising for one bad entry.

Rules (what ``rampart client scan`` promises):

- roots are taken in the order given; a folder's entries in sorted name order, depth
  first (a subfolder's files come where its name sorts);
- the tree is everything under the roots given; a root given as a symlink is followed
  (the user named it), and its target is the tree;
- a symlink inside the tree to a file or folder inside it is followed once: the target is
  reported at its real place (the root as given + its real path under that root), so
  ``hash_file``, which refuses symlinks, can open it, and a quarantine moves the file
  itself; meeting that place again (through its folder, another link, a loop back to an
  ancestor, a root given twice or nested roots) reports nothing more;
- a symlink leading out of the tree is not followed: reported with the error
  "symlink out of the tree"; broken links and loops of links are reported too;
- fifos, sockets and devices are reported as skipped and never opened; a folder that
  cannot be read is reported and the walk goes on.

Every entry is a ``Found``: ``stat`` (the ``lstat`` of a regular file) is set exactly
when ``error`` is None, so a caller hashes those and reports the others. Hard links are
separate names of one file and are each reported (each is a path a user may act on).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

OUT_OF_TREE = "symlink out of the tree"
BROKEN = "broken symlink"
LOOP = "symlink loop"


@dataclass(frozen=True, slots=True)
class Found:
    """One file to hash (``stat`` set) or one entry the scan skipped (``error`` says why)."""

    path: Path
    stat: os.stat_result | None
    error: str | None = None


def special(mode: int) -> str:
    """The error for a file that is neither regular, folder nor symlink."""
    what = ("fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
            else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file")
    return f"{what}: not a regular file, skipped"


def _why(e: OSError) -> str:
    return e.strerror or str(e)


@dataclass
class _Walk:
    """The state of one walk: the roots' real paths and what has been met already."""

    roots: list[tuple[str, str, bool]] = field(default_factory=list)  # (real, shown, is a folder)
    folders: set[tuple[int, int]] = field(default_factory=set)  # (dev, ino) entered
    reported: set[str] = field(default_factory=set)  # places reported through a symlink

    def place(self, real: str) -> str | None:
        """Where ``real`` (a resolved path) shows inside the tree, or None when outside."""
        for root_real, shown, _ in self.roots:
            if real == root_real:
                return shown
            if real.startswith(root_real.rstrip(os.sep) + os.sep):
                return os.path.join(shown, real[len(root_real.rstrip(os.sep)) + 1:])
        return None

    def covered(self, real: str) -> bool:
        """True for a file lying under a folder root: that folder's walk reports it."""
        return any(folder and real.startswith(root_real.rstrip(os.sep) + os.sep)
                   for root_real, _, folder in self.roots)

    def root(self, given: Path) -> Iterator[Found]:
        """The entries under one root as given."""
        text = str(given)
        try:
            info = os.lstat(text)
            if stat.S_ISLNK(info.st_mode):
                text = os.path.realpath(text, strict=True)
                info = os.stat(text)
                if stat.S_ISDIR(info.st_mode):
                    text = str(given)
        except OSError as e:
            yield Found(given, None, _link_error(e) if os.path.islink(given) else f"cannot read: {_why(e)}")
            return
        except ValueError as e:  # a NUL in a path typed by hand
            yield Found(given, None, f"cannot read: {e}")
            return
        if stat.S_ISDIR(info.st_mode):
            yield from self.folder(text, info)
        elif text not in self.reported and not self.covered(os.path.realpath(text)):
            self.reported.add(text)
            yield _file(Path(text), info)

    def folder(self, top: str, info: os.stat_result) -> Iterator[Found]:
        """Depth first from the folder ``top``, an explicit stack (no recursion limit)."""
        stack = [self._list(top, info)]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
            elif isinstance(item, Found):
                yield item
            else:
                stack.append(self._list(*item))

    def _list(self, top: str, info: os.stat_result) -> Iterator[Found | tuple[str, os.stat_result]]:
        """A folder's entries in name order: Found for files and errors, (path, stat) for
        subfolders to enter (including those reached through a symlink inside the tree).
        Nothing for a folder met before (by device and inode); it counts as met once listed,
        so its files are then known to be covered by this listing."""
        key = (info.st_dev, info.st_ino)
        if key in self.folders:
            return
        try:
            with os.scandir(top) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield Found(Path(top), None, f"cannot read folder: {_why(e)}")
            return
        self.folders.add(key)
        base = Path(top)  # a child of it is made ~2x faster than a Path parsed whole
        for entry in entries:
            try:
                if entry.is_symlink():
                    yield from self._link(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    yield entry.path, entry.stat(follow_symlinks=False)
                elif entry.path not in self.reported:
                    yield _file(base / entry.name, entry.stat(follow_symlinks=False))
            except OSError as e:  # vanished or unreadable between listing and stat
                yield Found(Path(entry.path), None, f"cannot read: {_why(e)}")

    def _link(self, link: str) -> Iterator[Found | tuple[str, os.stat_result]]:
        """A symlink met in a folder: followed once when it leads inside the tree."""
        try:
            real = os.path.realpath(link, strict=True)
            info = os.stat(real)
        except OSError as e:
            yield Found(Path(link), None, _link_error(e))
            return
        shown = self.place(real)
        if shown is None:
            yield Found(Path(link), None, OUT_OF_TREE)
        elif stat.S_ISDIR(info.st_mode):
            yield shown, info
        elif shown not in self.reported and not self._listed_parent(real):
            self.reported.add(shown)
            yield _file(Path(shown), info)

    def _listed_parent(self, real: str) -> bool:
        """True when the folder holding ``real`` was listed: that listing reports it."""
        try:
            parent = os.stat(os.path.dirname(real))
        except OSError:
            return False
        return (parent.st_dev, parent.st_ino) in self.folders


def _file(path: Path, info: os.stat_result) -> Found:
    if stat.S_ISREG(info.st_mode):
        return Found(path, info)
    return Found(path, None, special(info.st_mode))


def _link_error(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return LOOP
    if e.errno == errno.ENOENT:
        return BROKEN
    return f"cannot follow symlink: {_why(e)}"


def walk(paths: Sequence[Path]) -> Iterator[Found]:
    """Every file under ``paths`` (files and folders) once, in a stable order; see the module
    docstring for symlinks and special files. Never raises for one bad entry."""
    state = _Walk()
    for given in paths:
        try:
            real = os.path.realpath(given, strict=True)
        except (OSError, ValueError):
            continue  # reported by root() below
        folder = os.path.isdir(real)
        state.roots.append((real, str(given) if folder or not os.path.islink(given) else real, folder))
    for given in paths:
        yield from state.root(given)
