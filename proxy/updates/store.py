"""The versioned pattern store in DATA/patterns: installed versions, the current one, rollback.

Layout::

    DATA/patterns/
      versions/<version>/   one complete pattern directory per installed version
      current               symlink -> versions/<version>, swapped atomically
      state.json            {"format": 1, "order": [...], "refused": [...], "newest": {...}}
      .staging/<pid>-…/     where an update builds a version before installing it
      .trash/               versions being removed
      .lock                 flock: install, rollback and migration are serialised

``current`` is the only truth about what is served: it is replaced with
``os.replace`` of a freshly made symlink, so a reader (a running server polling
it, ``rampart update now`` in another process) sees either the old or the new
target, never a mix. ``order`` is the install order (oldest first), which
rollback walks back along; ``refused`` holds versions an operator rolled back,
which the updater will not reinstall until something newer is published;
``newest`` is the high-water mark of what was installed from an update source
(``proxy.updates.repo.newest``: each key only ever grows, rollback leaves it), below
which the updater refuses a manifest as a replay.

Two processes starting on a fresh data directory both build the sample;
``install_first`` installs it only if nothing is current yet, so the second
uses what the first installed.

The last ``keep`` versions are kept; the current one is never pruned. A server
that has a pruned version open keeps reading it (its files stay mapped until
it closes them).

The layout before issue 3 (``current`` a plain pattern directory) is migrated
on open: the directory moves to ``versions/<its version>`` and ``current``
becomes a symlink to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from proxy.errors import AlreadyCurrent, PatternError, Superseded
from proxy.files import check_private_dir, fsync_dir, locked, make_dirs, read_json, write_atomic
from proxy.patterns.pattern import pattern_info, read_manifest

logger = logging.getLogger(__name__)

STATE = "state.json"
STATE_FORMAT = 1
MAX_STATE_BYTES = 1 << 20
DEFAULT_KEEP = 3
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_REFUSED = 64
_MAX_MARK = 32


def check_name(name: str) -> str:
    """A version directory name: ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``; PatternError otherwise."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise PatternError(f"bad pattern version name {str(name)[:80]!r}")
    return name


@dataclass(frozen=True, slots=True)
class StoreState:
    order: tuple[str, ...]  # install order, oldest first
    refused: tuple[str, ...]  # rolled back by an operator
    newest: Mapping[str, str] = field(default_factory=dict)  # the high-water mark


class PatternStore:
    """Installed pattern versions under ``root`` (DATA/patterns) and the pointer to the served one."""

    def __init__(self, root: Path, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise PatternError("keep_versions must be at least 1")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"

    @classmethod
    def open(cls, root: Path, *, keep: int = DEFAULT_KEEP) -> PatternStore:
        """Create the layout if needed, migrate the old one, repair a dangling pointer."""
        store = cls(root, keep)
        check_private_dir(store.root.parent)  # the data directory: whoever writes it owns the store
        for folder in (store.root, store.versions_dir):  # where `current` and its targets live
            check_private_dir(folder, "pattern store folder")
        with store._locked():
            store._migrate()
            store._repair()
            store._clean_staging()
        return store

    # ------------------------------------------------------------ reading

    def current_version(self) -> str | None:
        """The served version's name, read from the pointer (cheap: one readlink)."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return name if _NAME.fullmatch(name) else None

    def current_path(self) -> Path | None:
        """The served version's directory (resolved, so it stays valid across later swaps)."""
        name = self.current_version()
        if name is None:
            return None
        path = self.versions_dir / name
        return path if path.is_dir() else None

    def path_of(self, version: str) -> Path:
        return self.versions_dir / check_name(version)

    def versions(self) -> list[str]:
        """Installed versions, oldest install first."""
        present = self._present()
        state = self._read_state()
        listed = [v for v in state.order if v in present]
        unlisted = sorted(present - set(listed))
        return unlisted + listed

    def refused(self) -> frozenset[str]:
        """Versions an operator rolled back; the updater does not install them again."""
        return frozenset(self._read_state().refused)

    def newest(self) -> dict[str, str]:
        """The high-water mark of what was installed from an update source ({}: nothing yet)."""
        return dict(self._read_state().newest)

    # ------------------------------------------------------------ changing

    def staging(self) -> Path:
        """A fresh empty directory on the store's file system to build a version in."""
        base = make_dirs(self.root / ".staging")
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))

    def install(self, new_dir: Path, version: str | None = None,
                newest: Mapping[str, str] | None = None) -> str:
        """Move ``new_dir`` (a complete pattern directory) in as ``version`` and make it current.

        ``version`` defaults to the manifest's. The directory is moved, not
        copied, so it must be on the store's file system (``staging()``).
        Installing a version that is already current is refused; installing
        one that is present but not current replaces it. ``newest`` (from an
        update source) raises the high-water mark, key by key; an install below
        the mark in any key is refused (``Superseded``): another process installed
        a newer update after this one was checked.
        """
        name = _installable(Path(new_dir), version)
        with self._locked():
            if name == self.current_version():
                raise AlreadyCurrent(f"pattern version {name} is already current")
            self._install(Path(new_dir), name, newest or {})
        logger.info("pattern version %s installed and current", name)
        return name

    def install_first(self, new_dir: Path, version: str | None = None) -> str:
        """Install ``new_dir`` (as ``version``, default the manifest's) unless a version is
        current already; returns the current version.

        For the first start: another process starting on the same fresh data
        directory may have installed its own build of the sample meanwhile; then
        that one is used and ``new_dir`` is left to the caller to remove.
        """
        name = _installable(Path(new_dir), version)
        with self._locked():
            current = self.current_path()
            if current is not None:
                logger.info("pattern version %s was installed by another process; using it",
                            current.name)
                return current.name
            self._install(Path(new_dir), name, {})
        logger.info("pattern version %s installed and current", name)
        return name

    def rollback(self) -> str:
        """Make the version installed before the current one current again; returns its name.

        The version rolled back from is remembered as refused, so a scheduled
        update does not install it again.
        """
        with self._locked():
            current = self.current_version()
            order = self.versions()
            if current is None or current not in order:
                raise PatternError("no current pattern version to roll back from")
            earlier = order[: order.index(current)]
            if not earlier:
                raise PatternError(f"no version before {current} to roll back to")
            target = earlier[-1]
            state = self._read_state()
            kept = [v for v in state.refused if v != current][-(_MAX_REFUSED - 1):]
            refused = [*kept, current]
            self._write_state(replace(state, refused=tuple(refused)))
            self._point(target)
        logger.info("pattern rolled back from %s to %s", current, target)
        return target

    # ------------------------------------------------------------ internals

    def _install(self, new_dir: Path, name: str, newest: Mapping[str, str]) -> None:
        """Move ``new_dir`` in as ``name``, record it, point ``current`` at it (under the lock)."""
        state = self._read_state()
        behind = sorted(k for k, v in newest.items() if v < state.newest.get(k, v))
        if behind:
            raise Superseded(f"not installing {name}: a newer update was installed meanwhile "
                             f"({', '.join(behind)})")
        dest = self.versions_dir / name
        if dest.exists():
            self._discard(dest)
        os.rename(new_dir, dest)
        try:
            order = [v for v in state.order if v != name] + [name]
            refused = [v for v in state.refused if v != name]
            mark = dict(state.newest)
            for key, value in newest.items():
                mark[key] = max(value, mark.get(key, value))
            self._write_state(StoreState(tuple(order), tuple(refused), mark))
            self._point(name)
        except BaseException:
            with contextlib.suppress(OSError):
                self._discard(dest)
            raise
        self._prune()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        make_dirs(self.root)
        with locked(self.root / ".lock"):
            yield

    def _present(self) -> set[str]:
        try:
            return {p.name for p in self.versions_dir.iterdir()
                    if p.is_dir() and _NAME.fullmatch(p.name)}
        except FileNotFoundError:
            return set()

    def _read_state(self) -> StoreState:
        path = self.root / STATE
        try:
            raw = read_json(path, MAX_STATE_BYTES, error=PatternError, label=STATE)
        except FileNotFoundError:
            return StoreState((), ())
        except OSError as e:
            raise PatternError(f"{STATE}: cannot read: {e.strerror or e}") from None
        except PatternError:
            raw = None
        if not isinstance(raw, dict):
            logger.warning("%s is unreadable; ordering versions by name", STATE)
            return StoreState((), ())

        def names(key: str) -> tuple[str, ...]:
            seq = raw.get(key)
            if not isinstance(seq, list):
                return ()
            return tuple(v for v in seq if isinstance(v, str) and _NAME.fullmatch(v))

        mark = raw.get("newest")
        newest = {k: v for k, v in mark.items() if isinstance(k, str) and isinstance(v, str)
                  and len(k) <= 64 and len(v) <= 64} if isinstance(mark, dict) else {}
        return StoreState(names("order"), names("refused"),
                          newest if len(newest) <= _MAX_MARK else {})

    def _write_state(self, state: StoreState) -> None:
        present = self._present()
        doc = {"format": STATE_FORMAT, "order": [v for v in state.order if v in present],
               "refused": list(state.refused), "newest": dict(state.newest)}
        write_atomic(self.root / STATE, json.dumps(doc).encode())

    def _point(self, name: str) -> None:
        tmp = self.root / f".current.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"versions/{name}", tmp)
        try:
            os.replace(tmp, self.current_link)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)

    def _discard(self, path: Path) -> None:
        trash = make_dirs(self.root / ".trash")
        moved = Path(tempfile.mkdtemp(prefix=f"{path.name}.", dir=trash))
        os.rename(path, moved / path.name)
        shutil.rmtree(moved, ignore_errors=True)

    def _prune(self) -> None:
        current = self.current_version()
        order = self.versions()
        excess = len(order) - self.keep
        for name in list(order):
            if excess <= 0:
                break
            if name == current:
                continue
            self._discard(self.versions_dir / name)
            excess -= 1
            logger.info("pattern version %s removed (keeping %d)", name, self.keep)
        state = self._read_state()
        self._write_state(state)

    def _migrate(self) -> None:
        link = self.current_link
        if link.is_symlink() or not link.exists():
            return
        if not link.is_dir():
            raise PatternError(f"{link.name} in the pattern store is neither a link nor a directory")
        try:
            version = read_manifest(link).version
        except PatternError as e:
            logger.warning("discarding an unusable pattern directory from the old layout: %s", e)
            self._discard(link)
            return
        name = version
        if (self.versions_dir / name).exists():
            name = f"{version}.migrated"
        os.rename(link, self.versions_dir / name)
        state = self._read_state()
        self._write_state(replace(state, order=(*state.order, name)))
        self._point(name)
        logger.info("pattern store migrated: the served pattern is now version %s", name)

    def _repair(self) -> None:
        if self.current_path() is not None:
            return
        order = self.versions()
        if not order:
            if self.current_link.is_symlink():
                self.current_link.unlink()
            return
        logger.warning("the current pattern pointer is missing or dangling; using %s", order[-1])
        self._point(order[-1])

    def _clean_staging(self) -> None:
        for base in (self.root / ".staging", self.root / ".trash"):
            if not base.is_dir():
                continue
            for p in base.iterdir():
                pid = p.name.split("-", 1)[0]
                if base.name == ".staging" and pid.isdigit() and _alive(int(pid)):
                    continue  # another process is building an update there right now
                shutil.rmtree(p, ignore_errors=True)


def _installable(new_dir: Path, version: str | None) -> str:
    """The name ``new_dir`` installs as, once it is a complete pattern directory."""
    info = pattern_info(new_dir)  # manifest readable, files present with the listed sizes
    if info["problems"]:
        raise PatternError(f"not installing: {'; '.join(info['problems'][:3])}")
    return check_name(version if version is not None else str(info["version"]))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

