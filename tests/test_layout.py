"""The layout holds: each package imports only what its docstring allows (docs/architecture.md,
“Layout”), the core never imports mitmproxy, and the repository never points outside itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BOTTOM = ("proxy.errors", "proxy.model", "proxy.forms", "proxy.config", "proxy.config_checks",
          "proxy.settings", "proxy.files", "proxy.clock")
CORE = (*BOTTOM, "proxy.wire", "proxy.patterns", "proxy.updates", "proxy.decide", "proxy.relay",
        "proxy.serve")

# A module under the first name may import, of Rampart, only the names after it (and itself).
MAY_IMPORT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("proxy.errors", ()),
    ("proxy.model", ("proxy.errors",)),
    ("proxy.files", ("proxy.errors",)),
    ("proxy.clock", ("proxy.errors",)),
    ("proxy.config_checks", ("proxy.errors", "proxy.model", "proxy.forms", "proxy.config")),
    ("proxy.config", ("proxy.errors", "proxy.model", "proxy.forms", "proxy.files", "proxy.config_checks")),
    ("proxy.forms", ("proxy.model",)),
    ("proxy.settings", ("proxy.errors", "proxy.config", "proxy.files")),
    ("proxy.wire", (*BOTTOM, "proxy.wire")),
    ("proxy.patterns", (*BOTTOM, "proxy.wire", "proxy.patterns")),
    ("proxy.relay", (*BOTTOM, "proxy.wire", "proxy.relay")),
    ("proxy.decide", (*BOTTOM, "proxy.wire", "proxy.patterns", "proxy.decide")),
    ("proxy.updates", (*BOTTOM, "proxy.wire", "proxy.patterns", "proxy.updates", "proxy.relay.http_client")),
    ("proxy.logs", (*BOTTOM, "proxy.wire", "proxy.logs")),
    ("proxy.client", (*BOTTOM, "proxy.wire", "proxy.patterns", "proxy.relay.http_client",
                      "proxy.relay.http_response", "proxy.client")),
    ("proxy.shared", (*BOTTOM, "proxy.wire", "proxy.decide", "proxy.shared")),
    ("proxy.serve", (*CORE, "proxy.logs", "proxy.shared", "certs")),
    ("proxy.dns", (*CORE, "proxy.logs", "proxy.dns")),
    ("proxy.sb", (*CORE, "proxy.sb")),
    ("proxy.console", (*BOTTOM, "proxy.wire", "proxy.decide", "proxy.logs", "proxy.serve", "proxy.updates",
                       "proxy.patterns", "certs", "proxy.console")),
    ("proxy.cli", ("proxy", "certs", "appliance")),
    ("proxy", ()),  # the package's own __init__
    ("certs", ("proxy.errors", "proxy.files", "proxy.clock", "certs")),
    ("appliance", ("proxy.errors", "proxy.config", "appliance")),
    ("addons", ("proxy", "certs", "addons")),
)
OURS = ("proxy", "certs", "appliance", "addons")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for top in OURS:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out.append((name, path))
    return out


def _is_module(name: str) -> bool:
    base = REPO / Path(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports: ``from proxy.wire import urls`` imports proxy.wire.urls,
    ``from proxy.wire.urls import canonicalize`` imports proxy.wire.urls."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                names.add(sub if _is_module(sub) else node.module)
    return names


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule(module: str) -> tuple[str, ...]:
    for prefix, allowed in MAY_IMPORT:
        if _within(module, prefix):
            return allowed
    raise AssertionError(f"{module} is in no package of the layout")


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_each_module_imports_only_what_its_package_may(module: str, path: Path) -> None:
    allowed = _rule(module)
    wrong = sorted(n for n in _imports(path) if any(_within(n, top) for top in OURS)
                   and not _within(n, module) and not any(_within(n, a) for a in allowed))
    assert not wrong, f"{module} may import only {allowed}, but imports {wrong}"


def test_the_core_never_imports_mitmproxy() -> None:
    offenders = [m for m, p in _modules() if not _within(m, "addons")
                 and any(_within(n, "mitmproxy") for n in _imports(p))]
    assert offenders == []


def test_nothing_points_outside_the_repository() -> None:
    pattern = re.compile(r"\.\./shared|shared/DESIGN")
    places = [REPO / "README.md", *(REPO / "docs").rglob("*.md")]
    for top in OURS:
        places += [p for p in (REPO / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    hits = [f"{p.relative_to(REPO)}:{n}" for p in places
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_the_design_documents_exist() -> None:
    for name in ("architecture.md", "protocol.md", "operations.md"):
        assert (REPO / "docs" / name).stat().st_size > 2000, name
