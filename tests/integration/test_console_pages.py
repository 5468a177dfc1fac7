"""The console's static pages as shipped: every script module the pages import is served by
the door, the page holds nothing the content security policy would refuse (inline script or
style, anything from another origin), and every element a script looks up by id exists.
Plain file reads, no browser: a broken import would otherwise only show as a blank page.
"""

from __future__ import annotations

import re
from importlib import resources

from proxy.console.door import PAGES, SCRIPTS

STATIC = resources.files("proxy.console").joinpath("static")


def _text(name: str) -> str:
    return STATIC.joinpath(name).read_text(encoding="utf-8")


def _scripts() -> dict[str, str]:
    return {f"{name}.js": _text(f"{name}.js") for name in SCRIPTS}


def test_every_module_imported_is_served_and_every_served_file_is_shipped() -> None:
    served = {path.lstrip("/") for path in PAGES if path != "/"}
    for name, text in _scripts().items():
        for target in re.findall(r'from\s+"\./([\w-]+\.js)"', text):
            assert target in served, f"{name} imports {target}, which the door does not serve"
    for _, (file, _kind) in PAGES.items():
        assert STATIC.joinpath(file).is_file(), file
    shipped = {p.name for p in STATIC.iterdir() if p.name.endswith((".js", ".css", ".html"))}
    assert shipped <= {file for file, _ in PAGES.values()}, "a static file the door never serves"


def test_the_page_needs_nothing_the_security_policy_refuses() -> None:
    html = _text("index.html")
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/console.js">']
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html), "an inline event handler"
    for text in [html, _text("console.css"), *_scripts().values()]:
        assert not re.search(r"(src|href)=\"(https?:)?//", text)
        assert "url(http" not in text and "@import" not in text
    for name, text in _scripts().items():
        assert ".innerHTML" not in text and "eval(" not in text, name


def test_every_element_a_script_finds_by_id_is_on_the_page() -> None:
    ids = set(re.findall(r'\sid="([\w-]+)"', _text("index.html")))
    for name, text in _scripts().items():
        for wanted in re.findall(r'\$\("#([\w-]+)[" ]', text):
            assert wanted in ids, f"{name} looks for #{wanted}, which index.html lacks"
