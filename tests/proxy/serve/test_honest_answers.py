"""What an item nobody knew becomes, as a product reads it (issue 9, items 7 and 8).

No cloud configured: ``unknown``/``untested`` with source ``local``, a note saying why
and the local TTL, so the product does not re-ask at once. A configured cloud that
did not answer: ``degraded`` with ``retry_after``, and, under a web policy, the
action ``degraded_action`` says (``high`` blocks it whatever it says).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, ConfigError, load
from proxy.errors import RelayError
from proxy.serve.app import App
from proxy.wire.http import Request, Response

UNKNOWN_SHA256 = "cd" * 32  # in no sample pattern
UNKNOWN_URL = "http://nobody-knows.example.test/page"
UNKNOWN_DOMAIN = "nobody-knows.example.test"


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Any]:
    apps: list[App] = []

    def make(authoritative: bool = False, **changes: Any) -> App:
        app = App(Config(data_dir=tmp_path / f"d{len(apps)}", query_port=0, query_tls_port=0,
                         **changes), authoritative=authoritative)
        (tmp_path / f"d{len(apps)}").mkdir(mode=0o700)
        app.open()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.lists_store.close()
        app.engine.patterns.close()


class DownCloud:
    """A configured cloud that never answers: every item relayed to it fails."""

    async def ask_many(self, service: Any, pairs: Any) -> list[Any]:
        return [RelayError("connection refused") for _ in pairs]


def answer(app: App, method: str, target: str, body: Any = None) -> dict[str, Any]:
    """The one result of a request, awaited when the engine relays."""
    raw = json.dumps(body).encode() if body is not None else b""
    got = app.routes(Request(method, target.encode(), [], raw, "127.0.0.1"))
    response = got if isinstance(got, Response) else asyncio.run(_wait(got))
    assert response.status == 200, response.body
    (only,) = json.loads(response.body)["results"]
    return only  # type: ignore[no-any-return]


async def _wait(pending: Any) -> Response:
    return await pending  # type: ignore[no-any-return]


# ---------------------------------------------------------------- no cloud configured


@pytest.mark.parametrize(
    ("method", "target", "body", "expected"),
    [
        ("GET", f"/v1/file/{UNKNOWN_SHA256}", None, {"verdict": "unknown"}),
        ("POST", "/v1/file", {"items": [{"sha256": UNKNOWN_SHA256}]}, {"verdict": "unknown"}),
        ("POST", "/v1/web", {"urls": [UNKNOWN_URL]}, {"rating": "untested", "score": 50}),
        ("GET", f"/v1/domain/{UNKNOWN_DOMAIN}", None, {"rating": "untested", "score": 50}),
        ("POST", "/v1/inspect", {"url": UNKNOWN_URL}, {"rating": "untested", "score": 50}),
    ],
)
def test_with_no_cloud_an_unknown_item_is_a_final_local_answer(
    make_app: Any, method: str, target: str, body: Any, expected: dict[str, Any]
) -> None:
    app = make_app()
    assert app.relay is None
    got = answer(app, method, target, body)
    assert got.items() >= {**expected, "source": "local", "note": "no cloud configured",
                           "ttl": app.cfg.local_ttl}.items()
    assert "retry_after" not in got  # nothing to wait for: asking again gives the same


def test_with_no_cloud_the_policy_judges_the_local_answer_as_untested(make_app: Any) -> None:
    app = make_app()
    for policy, action in (("low", "allow"), ("medium", "allow"), ("high", "block")):
        got = answer(app, "POST", "/v1/web", {"urls": [UNKNOWN_URL], "policy": policy})
        assert (got["source"], got["action"]) == ("local", action), policy


def test_the_reference_cloud_still_answers_cloud_without_a_note(make_app: Any) -> None:
    got = answer(make_app(authoritative=True), "GET", f"/v1/file/{UNKNOWN_SHA256}")
    assert (got["verdict"], got["source"], got["ttl"]) == ("unknown", "cloud", 3600)
    assert "note" not in got


# ---------------------------------------------------------------- a cloud that did not answer


def test_a_configured_cloud_that_does_not_answer_gives_degraded(make_app: Any) -> None:
    app = make_app(degraded_retry_after=90)
    app.engine.relay = DownCloud()
    got = answer(app, "GET", f"/v1/file/{UNKNOWN_SHA256}")
    assert got.items() >= {"verdict": "unknown", "source": "degraded", "retry_after": 90}.items()
    assert "ttl" not in got and "note" not in got


@pytest.mark.parametrize(
    ("degraded_action", "actions"),
    [
        (None, {"low": "allow", "medium": "allow", "high": "block"}),  # the default: allow
        ("allow", {"low": "allow", "medium": "allow", "high": "block"}),
        ("block", {"low": "block", "medium": "block", "high": "block"}),
    ],
)
def test_degraded_action_sets_the_action_of_degraded_items(
    make_app: Any, degraded_action: str | None, actions: dict[str, str]
) -> None:
    app = make_app(**({"degraded_action": degraded_action} if degraded_action else {}))
    app.engine.relay = DownCloud()
    for policy, action in actions.items():
        got = answer(app, "POST", "/v1/web", {"urls": [UNKNOWN_URL], "policy": policy})
        assert (got["source"], got["action"]) == ("degraded", action), policy
        assert got["retry_after"] == app.cfg.degraded_retry_after  # re-ask, whatever the action


def test_degraded_action_block_leaves_rated_items_to_the_policy(make_app: Any) -> None:
    app = make_app(degraded_action="block")
    app.engine.relay = DownCloud()
    for url, action in (("http://testsafebrowsing.appspot.com/s/malware.html", "block"),
                        ("http://testsafebrowsing.appspot.com/", "allow")):  # dangerous, safe
        got = answer(app, "POST", "/v1/web", {"urls": [url], "policy": "low"})
        assert (got["source"], got["action"]) == ("pattern", action), url


# ---------------------------------------------------------------- the config key


def test_degraded_action_defaults_to_allow_and_is_validated(tmp_path: Path) -> None:
    assert Config().degraded_action == "allow"
    assert Config().replace(degraded_action="block").degraded_action == "block"
    with pytest.raises(ConfigError, match="'degraded_action': 'deny' is not 'allow' or 'block'"):
        Config().replace(degraded_action="deny")
    toml = tmp_path / "rampart.toml"
    toml.write_text('degraded_action = "Block"\n')
    with pytest.raises(ConfigError, match="degraded_action"):
        load(toml)
    toml.write_text('degraded_action = "block"\n')
    assert load(toml).degraded_action == "block"
