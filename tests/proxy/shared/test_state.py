"""An App opened with ``redis`` set: its list writes go through Redis, its engine has the
shared cache, its rate gate counts across appliances, and /readyz and /metrics say where
Redis is (never with its password) and whether it answers."""

from __future__ import annotations

import pytest

from proxy.config import Config
from proxy.decide.lists import ListName
from proxy.serve.app import App
from proxy.shared.lists import ListsUnreachable
from tests.redis_server import RedisServer


def opened(tmp_path, url: str, **keys) -> App:
    app = App(Config(data_dir=tmp_path / "d", query_port=0, query_tls_port=0, redis=url, **keys))
    (tmp_path / "d").mkdir(mode=0o700)
    app.open()
    return app


async def test_an_app_with_redis_shares_and_reports_it(tmp_path):
    with RedisServer(tmp_path, password="pw") as redis:
        app = opened(tmp_path, redis.url, rate_limit=5.0)
        try:
            assert app.engine.shared is app.shared.answers
            assert [r.scope for r in app.shared.rates] == ["query"]
            app.lists_store.add(ListName.BLOCKED, [(None, "shared.example")])
            assert b"shared.example" in redis.command("HKEYS", "rampart:lists:rules")
            section = app.readiness()["redis"]
            assert section["url"] == f"127.0.0.1:{redis.port}/0" and section["state"] == "up"
            text = app._metrics().decode()
            assert "rampart_redis_up 1.0" in text and "pw" not in str(section)
            redis.stop()
            with pytest.raises(ListsUnreachable):
                app.lists_store.add(ListName.BLOCKED, [(None, "refused.example")])
            assert [e.value for e in app.lists_store.entries()] == ["shared.example"]
            assert app.readiness()["redis"]["state"] == "down"
            assert "rampart_redis_up 0.0" in app._metrics().decode()
        finally:
            await app.shared.close()
            app.lists_store.close()
            app.engine.patterns.close()


def test_without_redis_nothing_is_shared(tmp_path):
    app = App(Config(data_dir=tmp_path, query_port=0, query_tls_port=0))
    app.open()
    try:
        assert app.shared is None and app.engine.shared is None
        assert "redis" not in app.readiness() and "rampart_redis" not in app._metrics().decode()
    finally:
        app.lists_store.close()
        app.engine.patterns.close()


async def test_the_dns_doors_rate_limit_is_shared_under_its_own_scope(tmp_path):
    from proxy.dns.door import start_dns

    with RedisServer(tmp_path) as redis:
        app = opened(tmp_path, redis.url, listen="127.0.0.1", dns_rate_limit=5.0)
        door = await start_dns(app.cfg, app, port=0)
        try:
            assert [r.scope for r in app.shared.rates] == ["dns"]
            assert app.shared.rates[0].gate is door.gate
        finally:
            await door.stop()
            await app.shared.close()
            app.lists_store.close()
            app.engine.patterns.close()
