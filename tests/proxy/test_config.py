"""Configuration: defaults, TOML file, flags, and refusals that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from proxy import config
from proxy.config import FIELDS, Config, ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rampart.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- defaults


def test_defaults_need_no_file() -> None:
    cfg = config.load()
    assert cfg == Config()
    assert (cfg.query_port, cfg.query_tls_port, cfg.max_batch, cfg.max_url) == (8080, 8443, 1000, 4096)
    assert cfg.cloud == [] and cfg.cloud_ca is None and cfg.authoritative is False


def test_default_list_values_are_not_shared() -> None:
    a, b = Config(), Config()
    a.cloud.append("https://x.test")
    assert b.cloud == []


@pytest.mark.parametrize("env, expected", [("/srv/rampart", Path("/srv/rampart"))])
def test_default_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, env: str, expected: Path) -> None:
    monkeypatch.setenv("RAMPART_DATA_DIR", env)
    assert config.default_data_dir() == expected


def test_default_data_dir_from_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAMPART_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert config.default_data_dir() == tmp_path / "rampart"


# ---------------------------------------------------------------- the file


def test_file_overrides_defaults_and_sections_are_flattened(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        query_port = 9080
        listen = "127.0.0.1"
        tls_names = ["spn.example", "192.0.2.1"]

        [relay]
        cloud = ["https://cloud.example:443", "https://backup.example"]
        read_timeout = 3
        batch-window = 0.01

        [answers]
        authoritative = true
        local_ttl = 600
        """,
    )
    cfg = config.load(path)
    assert cfg.query_port == 9080
    assert cfg.listen == "127.0.0.1"
    assert cfg.tls_names == ["spn.example", "192.0.2.1"]
    assert cfg.cloud == ["https://cloud.example:443", "https://backup.example"]
    assert cfg.read_timeout == 3.0 and isinstance(cfg.read_timeout, float)
    assert cfg.batch_window == 0.01  # dashes read as underscores
    assert cfg.authoritative is True
    assert cfg.local_ttl == 600
    assert cfg.max_batch == 1000  # untouched keys keep their defaults


def test_nested_sections_are_flattened_too(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "[doors.query]\nquery_tls_port = 9443\n"))
    assert cfg.query_tls_port == 9443


def test_paths_from_file_expand_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = config.load(write(tmp_path, 'data_dir = "~/state"\npattern_dir = ""\n'))
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.pattern_dir is None


@pytest.mark.parametrize(
    "text, named",
    [
        ("query_prot = 1\n", "'query_prot'"),
        ("[relay]\nread_timout = 1\n", "'relay.read_timout'"),
        ("[a.b]\nnope = 1\n", "'a.b.nope'"),
    ],
)
def test_unknown_key_refused_naming_it(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match="unknown key") as info:
        config.load(write(tmp_path, text))
    assert named in info.value.message
    assert info.value.exit_code == 2


def test_key_set_twice_through_sections_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="read_timeout") as info:
        config.load(write(tmp_path, "read_timeout = 1\n[relay]\nread_timeout = 2\n"))
    assert "twice" in info.value.message


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"query_port = \n", "rampart.toml"),
        (b"[relay\n", "rampart.toml"),
        (b"query_port = 80\nquery_port = 81\n", "rampart.toml"),
        (b'listen = "\xff"\n', "rampart.toml"),
        (b"x" * (config.MAX_CONFIG_BYTES + 1), "at most 1048576"),
    ],
    ids=["no value", "bad table", "key twice", "not UTF-8", "too large"],
)
def test_unreadable_file_refused(tmp_path: Path, raw: bytes, fragment: str) -> None:
    path = tmp_path / "rampart.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert fragment in info.value.message


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path / "absent.toml")


# ---------------------------------------------------------------- flags


def test_flags_override_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'query_port = 9000\nmax_batch = 50\nlog_level = "debug"\n')
    cfg = config.load(path, {"query_port": 9100, "max_batch": None, "cloud": (), "tls_names": []})
    assert cfg.query_port == 9100  # the flag wins
    assert cfg.max_batch == 50  # a flag left unset (None) keeps the file's value
    assert cfg.log_level == "debug"
    assert cfg.cloud == [] and cfg.tls_names == []


@pytest.mark.parametrize(
    "key, flag, expected",
    [
        ("query_port", "9090", 9090),
        ("query_port", 9081.0, 9081),
        ("read_timeout", "2.5", 2.5),
        ("read_timeout", 3, 3.0),
        ("authoritative", "yes", True),
        ("authoritative", "on", True),
        ("authoritative", "1", True),
        ("authoritative", "TRUE", True),
        ("authoritative", "off", False),
        ("authoritative", "no", False),
        ("authoritative", False, False),
        ("tls_names", "spn.example", ["spn.example"]),
        ("tls_names", ("a.example", "b.example"), ["a.example", "b.example"]),
        ("cloud", ("https://c.example",), ["https://c.example"]),
        ("cloud", ["http://127.0.0.1:8443/"], ["http://127.0.0.1:8443/"]),
        ("cloud", ["https://[::1]:8443"], ["https://[::1]:8443"]),
        ("listen", "::1", "::1"),
        ("listen", "localhost", "localhost"),
        ("data_dir", "/srv/rampart", Path("/srv/rampart")),
        ("pattern_dir", Path("/srv/p"), Path("/srv/p")),
        ("query_port", 0, 0),
        ("max_inspect_content", 0, 0),
        ("batch_window", 0, 0.0),
    ],
)
def test_flag_values_coerced(key: str, flag: Any, expected: Any) -> None:
    value = getattr(config.load(overrides={key: flag}), key)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "key, value",
    [
        ("query_port", -1),
        ("query_port", 65536),
        ("query_port", "http"),
        ("query_port", "80x"),
        ("query_port", 80.5),
        ("query_port", True),
        ("query_port", [80]),
        ("query_port", float("inf")),
        ("query_tls_port", 70000),
        ("max_body", 1023),
        ("max_body", (64 << 20) + 1),
        ("max_batch", 0),
        ("max_batch", 100_001),
        ("max_url", 63),
        ("max_header", 512),
        ("max_inspect_content", -1),
        ("idle_timeout", 0.5),
        ("local_ttl", -1),
        ("cache_size", -1),
        ("cache_size", [1]),
        ("degraded_retry_after", 0),
        ("degraded_retry_after", 86401),
        ("lists_poll", 0.01),
        ("authoritative", "maybe"),
        ("authoritative", 2),
        ("connect_timeout", 0),
        ("read_timeout", "fast"),
        ("read_timeout", 301),
        ("read_timeout", float("nan")),
        ("read_timeout", True),
        ("breaker_cooldown", float("inf")),
        ("breaker_cooldown", 0.05),
        ("breaker_failures", 0),
        ("total_timeout", 601),
        ("batch_window", 1.5),
        ("max_relay_concurrency", 0),
        ("stale_after", 59),
        ("tls_names", 5),
        ("tls_names", ["a", 1]),
        ("cloud", 5),
        ("cloud", ["https://c.example", None]),
        ("listen", "not-an-ip"),
        ("listen", "256.0.0.1"),
        ("listen", 127),
        ("log_level", "verbose"),
        ("log_level", "INFO"),
        ("log_level", 10),
        ("data_dir", ""),
        ("data_dir", 5),
        ("data_dir", ["/srv"]),
        ("cloud_ca", 5),
    ],
)
def test_bad_value_refused_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(overrides={key: value})
    assert f"'{key}'" in info.value.message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "key, toml",
    [
        ("query_port", 'query_port = "eighty"'),
        ("read_timeout", "[relay]\nread_timeout = nan"),
        ("breaker_cooldown", "breaker_cooldown = inf"),
        ("authoritative", 'authoritative = "perhaps"'),
        ("max_batch", "max_batch = 0"),
        ("cloud", 'cloud = "ftp://c.example"'),
        ("tls_names", "tls_names = [1, 2]"),
        ("listen", 'listen = ["127.0.0.1"]'),
        ("data_dir", "data_dir = 7"),
    ],
)
def test_bad_value_in_file_refused_naming_the_key(tmp_path: Path, key: str, toml: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, toml + "\n"))
    assert f"'{key}'" in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "cloud.example",
        "ftp://cloud.example",
        "https://",
        "https:///v1",
        "https://cloud.example/v1/file",
        "https://cloud.example:99999",
        "https://cloud.example:port",
        "https://[::1",
        "https://cloud.example/?x=1",
        "https://cloud.example#frag",
        "https://user:secret@cloud.example",
    ],
)
def test_bad_cloud_url_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="'cloud'"):
        config.load(overrides={"cloud": ["https://good.example", url]})


def test_missing_cloud_ca_refused_naming_only_the_file_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'cloud_ca'") as info:
        config.load(overrides={"cloud_ca": str(tmp_path / "sub" / "ca.pem")})
    assert "ca.pem" in info.value.message
    assert str(tmp_path) not in info.value.message  # no full local paths in messages


def test_existing_cloud_ca_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert config.load(overrides={"cloud_ca": str(ca)}).cloud_ca == ca


@pytest.mark.parametrize(
    "http, https, ok",
    [(8080, 8443, True), (9000, 9000, False), (0, 0, True), (0, 8443, True), (8443, 0, True)],
)
def test_same_query_ports_refused(http: int, https: int, ok: bool) -> None:
    overrides = {"query_port": http, "query_tls_port": https}
    if ok:
        assert config.load(overrides=overrides).query_port == http
    else:
        with pytest.raises(ConfigError, match="'query_port' and 'query_tls_port'"):
            config.load(overrides=overrides)


def test_unknown_flag_refused() -> None:
    with pytest.raises(ConfigError, match="'nope'"):
        config.load(overrides={"nope": 1})


# ---------------------------------------------------------------- replace


def test_replace_checks_like_a_flag() -> None:
    cfg = Config()
    assert cfg.replace(query_port="9999").query_port == 9999
    with pytest.raises(ConfigError, match="'query_port'"):
        cfg.replace(query_port=99999)
    with pytest.raises(ConfigError, match="'query_port' and 'query_tls_port'"):
        cfg.replace(query_port=8443)
    with pytest.raises(ConfigError, match="'nope'"):
        cfg.replace(nope=1)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().query_port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- describe


def test_describe_covers_every_field_with_help() -> None:
    rows = config.describe()
    assert [key for key, _, _ in rows] == [f.name for f in dataclasses.fields(Config)]
    defaults = Config()
    for key, default, help_text in rows:
        assert default == repr(getattr(defaults, key))
        assert help_text.strip(), key
        assert len(help_text) < 200, key


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_numeric_default_is_within_its_own_range(name: str) -> None:
    f = FIELDS[name]
    value = getattr(Config(), name)
    lo, hi = f.metadata["lo"], f.metadata["hi"]
    assert lo is None or value >= lo
    assert hi is None or value <= hi


# ---------------------------------------------------------------- intercept door and capture


def test_intercept_and_capture_defaults() -> None:
    cfg = Config()
    assert (cfg.proxy_port, cfg.transparent_port, cfg.capture_port) == (3128, 8081, 4344)
    assert cfg.intercept_hosts == [] and cfg.capture is None and cfg.capture_filter == ""
    assert "127.0.0.0/8" in cfg.allow_clients and "192.168.0.0/16" in cfg.allow_clients
    assert "0.0.0.0/0" not in cfg.allow_clients and "::/0" not in cfg.allow_clients


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("proxy_port", "0", 0),
        ("transparent_port", 18081, 18081),
        ("intercept_hosts", "cloud.rampart.test", ["cloud.rampart.test"]),
        ("intercept_hosts", ["*.trendmicro.com", "192.0.2.9", "LOCALHOST"],
         ["*.trendmicro.com", "192.0.2.9", "LOCALHOST"]),
        ("allow_clients", ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
         ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]),
        ("capture", "~/flows.mitm", Path.home() / "flows.mitm"),
        ("capture_filter", "~d cloud.rampart.test", "~d cloud.rampart.test"),
        ("capture_port", 0, 0),
    ],
)
def test_intercept_values_accepted(key: str, value: Any, expected: Any) -> None:
    assert getattr(config.load(overrides={key: value}), key) == expected


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("proxy_port", 70000, "'proxy_port'"),
        ("transparent_port", -1, "'transparent_port'"),
        ("capture_port", "x", "'capture_port'"),
        ("intercept_hosts", ["cloud.*.test"], "'intercept_hosts'"),
        ("intercept_hosts", ["*.192.0.2.1"], "'intercept_hosts'"),
        ("intercept_hosts", ["host:443"], "'intercept_hosts'"),
        ("intercept_hosts", ["https://cloud.test"], "'intercept_hosts'"),
        ("intercept_hosts", ["-bad.test"], "'intercept_hosts'"),
        ("intercept_hosts", [""], "'intercept_hosts'"),
        ("intercept_hosts", 5, "'intercept_hosts'"),
        ("allow_clients", ["10.0.0.0/33"], "'allow_clients'"),
        ("allow_clients", ["everyone"], "'allow_clients'"),
        ("capture_filter", 5, "'capture_filter'"),
    ],
)
def test_bad_intercept_values_refused_naming_the_key(key: str, value: Any, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config.load(overrides={key: value})


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"proxy_port": 8080}, "'query_port' and 'proxy_port'"),
        ({"proxy_port": 9000, "transparent_port": 9000}, "'proxy_port' and 'transparent_port'"),
        ({"capture_port": 3128}, "'proxy_port' and 'capture_port'"),
        ({"transparent_port": 8443}, "'query_tls_port' and 'transparent_port'"),
    ],
)
def test_doors_on_the_same_port_refused(overrides: dict[str, int], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config.load(overrides=overrides)


def test_doors_turned_off_may_all_be_zero() -> None:
    zero = dict.fromkeys(
        ("query_port", "query_tls_port", "proxy_port", "transparent_port", "capture_port"), 0
    )
    assert config.load(overrides=zero).proxy_port == 0


# ---------------------------------------------------------------- pattern updates


def test_updates_are_off_by_default() -> None:
    cfg = Config()
    assert cfg.update_source == "" and cfg.update_key is None
    assert (cfg.update_interval, cfg.keep_versions) == (3600, 3)
    assert cfg.update_interval_web_blocking == 0  # 0: follow update_interval


def test_update_source_and_key_from_file(tmp_path: Path) -> None:
    key = tmp_path / "release.pub"
    key.write_text("key")
    path = write(tmp_path, f"""
        [updates]
        update_source = "https://updates.example/rampart"
        update_key = "{key}"
        update_interval_smart_scan = 900
        keep_versions = 5
        """)
    cfg = config.load(path)
    assert cfg.update_source == "https://updates.example/rampart" and cfg.update_key == key
    assert (cfg.update_interval_smart_scan, cfg.keep_versions) == (900, 5)


def test_update_source_without_key_refused() -> None:
    with pytest.raises(ConfigError, match="'update_key' is required"):
        config.load(overrides={"update_source": "http://127.0.0.1:9/"})


def test_missing_update_key_refused_naming_only_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'update_key'") as info:
        config.load(overrides={"update_key": str(tmp_path / "k.pub")})
    assert "k.pub" in info.value.message and str(tmp_path) not in info.value.message


@pytest.mark.parametrize("url", [
    "ftp://updates.example/", "https://", "https://u:p@updates.example/", "https://x.example/?a=1",
    "https://x.example:99999/", "updates.example",
])
def test_bad_update_source_refused(tmp_path: Path, url: str) -> None:
    key = tmp_path / "k.pub"
    key.write_text("k")
    with pytest.raises(ConfigError, match="'update_source'"):
        config.load(overrides={"update_source": url, "update_key": str(key)})


@pytest.mark.parametrize(("key", "value"), [
    ("update_interval", 0), ("keep_versions", 0), ("update_backoff_max", 0.5),
    ("update_interval_domain_ip", -1), ("pattern_poll", 0),
])
def test_update_numbers_out_of_range_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config.load(overrides={key: value})


@pytest.mark.parametrize(
    ("url", "ok"),
    [("https://cloud.example:9443", True), ("http://127.0.0.1:9443", True), ("http://[::1]:9443", True),
     ("http://localhost:9443", True), ("http://cloud.example:80", False), ("http://10.0.0.7", False)],
)
def test_plain_http_cloud_only_on_loopback(url: str, ok: bool) -> None:
    if ok:
        assert config.load(overrides={"cloud": [url]}).cloud == [url]
    else:
        with pytest.raises(ConfigError, match=r"'cloud'.*https"):
            config.load(overrides={"cloud": [url]})


@pytest.mark.parametrize("key", ["query_clients", "dns_clients"])
def test_an_empty_clients_list_is_refused_not_read_as_every_client(tmp_path, key):
    path = tmp_path / "rampart.toml"
    path.write_text(f"{key} = []\n")
    with pytest.raises(ConfigError, match=rf"'{key}' is empty.*0\.0\.0\.0/0"):
        config.load(path)
    assert config.load(None, {"query_clients": ["0.0.0.0/0", "::/0"]}).query_clients == [
        "0.0.0.0/0", "::/0"]


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1", "redis://127.0.0.1:6380/2", "redis://:secret@db.example:6379/0",
    "rediss://user:pw@db.example", "unix:///run/redis/redis.sock", "redis://[::1]:6379",
])
def test_redis_urls_of_every_form_are_taken(url: str) -> None:
    assert config.load(overrides={"redis": url}).redis == url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1", "redis://", "redis://host:99999", "redis://host/db1", "unix://host/x",
    "redis://h?x=1", "redis://h o", "redis://:s3cret@host/db1",
])
def test_a_bad_redis_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(overrides={"redis": url})
    assert "config key 'redis'" in e.value.message and "s3cret" not in e.value.message


def test_workers_auto_is_zero_and_the_count_is_bounded() -> None:
    assert config.load(overrides={"workers": 0}).workers == 0
    with pytest.raises(ConfigError, match="'workers'"):
        config.load(overrides={"workers": 257})
