"""Tests for `rampart ca` (proxy/cli/ca.py) and what it drives: certs/rotate.py (import, rotation,
overlap bundle) and certs/expiry.py (the warnings /readyz and metrics show)."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs import CA, CertError, KeyType, server_context
from certs.expiry import Expiry, certificate_expiries, expiry_warnings, warnings_for
from certs.rotate import (
    BUNDLE_FILE,
    Retired,
    bundle_members,
    import_ca,
    import_problems,
    load_retired,
    refresh_bundle,
    rotate,
)
from proxy.cli import cli

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def pem_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def served(data: Path, ca: CA, names: list[str], now: dt.datetime = NOW) -> Path:
    server_context(ca, names, state_dir=data / "tls", now=now)
    return data / "tls" / "tls-server.pem"


# -- rampart ca init / show / export -----------------------------------------------------


def test_init_creates_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out = run("ca", "init", "--data-dir", str(data))
    assert code == 0, out
    assert mode(data / "ca-key.pem") == 0o600
    fp = CA.load(data).fingerprint_sha256()
    assert fp in out
    assert (data / "mitmproxy" / "mitmproxy-ca.pem").exists()

    code, out = run("ca", "init", "--data-dir", str(data))
    assert code != 0
    assert "already exists" in out and "rotate" in out
    assert CA.load(data).fingerprint_sha256() == fp  # untouched


def test_init_rsa_and_show(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("ca", "init", "--data-dir", str(data), "--key-type", "rsa-2048",
               "--common-name", "Example Corp CA", "--days", "100")[0] == 0
    code, out = run("ca", "show", "--data-dir", str(data), "--json")
    assert code == 0, out
    info = json.loads(out)
    ca = CA.load(data)
    assert info["subject"] == "O=Rampart,CN=Example Corp CA"
    assert info["sha256"] == ca.fingerprint_sha256()
    assert info["key"] == "RSA 2048"
    assert info["days_left"] in (99, 100)
    assert info["not_after"] == ca.not_after.isoformat()
    assert info["warnings"] == []  # 100 days is outside the 90-day CA warning window

    code, text = run("ca", "show", "--data-dir", str(data))
    assert code == 0
    assert ca.fingerprint_sha256() in text and "days left" in text and "RSA 2048" in text


def test_show_without_a_ca_says_which_file_is_missing(tmp_path: Path) -> None:
    code, out = run("ca", "show", "--data-dir", str(tmp_path))
    assert code == 2
    assert "ca.pem does not exist" in out


@pytest.mark.parametrize("fmt", ["pem", "der"])
def test_export_writes_the_certificate_never_the_key(tmp_path: Path, fmt: str) -> None:
    data = tmp_path / "data"
    ca = CA.ensure(data)
    out = tmp_path / f"ca.{fmt}"
    code, text = run("ca", "export", "--data-dir", str(data), "--format", fmt, "--out", str(out))
    assert code == 0, text
    raw = out.read_bytes()
    cert = x509.load_pem_x509_certificate(raw) if fmt == "pem" else x509.load_der_x509_certificate(raw)
    assert cert == ca.cert
    assert b"PRIVATE KEY" not in raw
    assert mode(out) == 0o644


def test_export_to_stdout_and_der_to_stdout_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ca = CA.ensure(data)
    code, out = run("ca", "export", "--data-dir", str(data), "--out", "-")
    assert code == 0 and x509.load_pem_x509_certificate(out.encode()) == ca.cert
    code, out = run("ca", "export", "--data-dir", str(data), "--format", "der", "--out", "-")
    assert code != 0 and "DER is binary" in out


def test_data_dir_from_config_file(tmp_path: Path) -> None:
    data = tmp_path / "from-config"
    cfg = tmp_path / "rampart.toml"
    cfg.write_text(f'data_dir = "{data}"\n')
    assert run("ca", "init", "--config", str(cfg))[0] == 0
    assert (data / "ca.pem").exists()


# -- rotation and the overlap bundle -----------------------------------------------------


def test_rotate_installs_a_new_ca_keeps_the_old_in_the_bundle_and_reissues(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = CA.ensure(data, now=NOW)
    leaf_path = served(data, old, ["localhost", "127.0.0.1", "appliance.example"])

    result = rotate(data, overlap_days=30, now=NOW)
    new = CA.load(data)
    assert new.cert != old.cert and result.ca.cert == new.cert
    assert new.subject_text() == "O=Rampart,CN=Rampart Appliance CA 2026-03-01"
    assert mode(data / "ca-key.pem") == 0o600
    assert pem_certs(data / BUNDLE_FILE) == [new.cert, old.cert]
    assert result.overlap_until == NOW + 30 * DAY
    # mitmproxy's confdir follows the new CA
    assert new.cert_pem() in (data / "mitmproxy" / "mitmproxy-ca.pem").read_bytes()
    # the served certificate was reissued by the new CA for the same names
    assert result.reissued == ("server",)
    leaf = pem_certs(leaf_path)[0]
    assert new.signed(leaf) and not old.signed(leaf)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "appliance.example"}
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    assert mode(leaf_path) == 0o600
    # and server_context now reuses it instead of issuing again
    before = leaf_path.read_bytes()
    served(data, new, ["localhost", "127.0.0.1", "appliance.example"])
    assert leaf_path.read_bytes() == before


def test_old_ca_leaves_the_bundle_after_the_overlap(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = CA.ensure(data, now=NOW)
    rotate(data, overlap_days=10, now=NOW)
    new = CA.load(data)
    assert refresh_bundle(data, now=NOW + 9 * DAY) == [new.cert, old.cert]
    assert refresh_bundle(data, now=NOW + 10 * DAY + dt.timedelta(seconds=1)) == [new.cert]
    assert pem_certs(data / BUNDLE_FILE) == [new.cert]
    assert load_retired(data) == []


def test_rotate_twice_keeps_both_former_cas_within_their_overlap(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = CA.ensure(data, now=NOW)
    rotate(data, overlap_days=30, now=NOW)
    second = CA.load(data)
    rotate(data, overlap_days=30, now=NOW + 5 * DAY)
    third = CA.load(data)
    assert third.subject_text() == "O=Rampart,CN=Rampart Appliance CA 2026-03-06"  # date replaced
    assert pem_certs(data / BUNDLE_FILE) == [third.cert, second.cert, first.cert]


def test_rotate_with_no_overlap_drops_the_old_ca_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    CA.ensure(data, now=NOW)
    result = rotate(data, overlap_days=0, now=NOW)
    assert result.overlap_until is None
    assert pem_certs(data / BUNDLE_FILE) == [CA.load(data).cert]


def test_rotate_keeps_the_key_type(tmp_path: Path) -> None:
    data = tmp_path / "data"
    CA.ensure(data, key_type=KeyType.RSA_2048, now=NOW)
    rotate(data, now=NOW)
    assert isinstance(CA.load(data).key, rsa.RSAPrivateKey)


def test_rotate_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = CA.ensure(data)
    code, out = run("ca", "rotate", "--data-dir", str(data), "--overlap-days", "7")
    assert code == 0, out
    new = CA.load(data)
    assert new.fingerprint_sha256() in out and "within 2 s" in out
    info = json.loads(run("ca", "show", "--data-dir", str(data), "--json")[1])
    assert [b["sha256"] for b in info["bundle"]] == [new.fingerprint_sha256(), old.fingerprint_sha256()]
    code, out = run("ca", "export", "--data-dir", str(data), "--bundle", "--out", "-")
    assert [c for c in x509.load_pem_x509_certificates(out.encode())] == [new.cert, old.cert]


@pytest.mark.parametrize(
    ("retired_until", "retired_expires", "kept"),
    [
        (NOW + DAY, NOW + 100 * DAY, True),
        (NOW - DAY, NOW + 100 * DAY, False),  # overlap over
        (NOW, NOW + 100 * DAY, False),  # ends exactly now
        (NOW + DAY, NOW - DAY, False),  # the old CA itself expired
    ],
)
def test_bundle_members(retired_until: dt.datetime, retired_expires: dt.datetime, kept: bool) -> None:
    current = CA.create(now=NOW).cert
    old = CA.create(now=retired_expires - 10 * DAY, days=10).cert
    members = bundle_members(current, [Retired(old, retired_until)], NOW)
    assert members == ([current, old] if kept else [current])


def test_corrupt_retired_list_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    CA.ensure(data)
    (data / "ca-retired.json").write_text('{"retired": [{"cert": "nope", "until": "x"}]}')
    with pytest.raises(CertError, match=r"ca-retired\.json"):
        refresh_bundle(data)


# -- importing an organisation's CA ------------------------------------------------------


def org_ca(tmp_path: Path, *, ca: bool = True, days: int = 365, start: dt.datetime = NOW - DAY,
           key: object | None = None, sign_usage: bool = True) -> tuple[Path, Path]:
    key = key or ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Corp Root")])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not sign_usage:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                                      False, False), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = tmp_path / "org.pem", tmp_path / "org-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_import_installs_the_org_ca_and_resyncs_mitmproxy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = CA.ensure(data, now=NOW)
    leaf_path = served(data, old, ["localhost"])
    cert_path, key_path = org_ca(tmp_path)
    code, out = run("ca", "import", "--data-dir", str(data), "--cert", str(cert_path),
                    "--key", str(key_path))
    assert code == 0, out
    ca = CA.load(data)
    assert ca.cert == pem_certs(cert_path)[0]
    assert mode(data / "ca-key.pem") == 0o600
    assert ca.cert_pem() in (data / "mitmproxy" / "mitmproxy-ca.pem").read_bytes()
    assert ca.signed(pem_certs(leaf_path)[0])
    assert pem_certs(data / BUNDLE_FILE) == [ca.cert, old.cert]


def test_import_into_an_empty_data_dir(tmp_path: Path) -> None:
    cert_path, key_path = org_ca(tmp_path)
    result = import_ca(tmp_path / "fresh", cert_path, key_path, now=NOW)
    assert result.previous is None
    assert pem_certs(tmp_path / "fresh" / BUNDLE_FILE) == [result.ca.cert]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ca": False}, "not a CA"),
        ({"start": NOW - 400 * DAY}, "expired on"),
        ({"start": NOW + 10 * DAY}, "not valid before"),
        ({"sign_usage": False}, "does not allow signing certificates"),
    ],
)
def test_import_refuses_what_cannot_be_a_ca(tmp_path: Path, kwargs: dict, message: str) -> None:
    data = tmp_path / "data"
    before = CA.ensure(data, now=NOW)
    cert_path, key_path = org_ca(tmp_path, **kwargs)
    with pytest.raises(CertError, match=message):
        import_ca(data, cert_path, key_path, now=NOW)
    assert CA.load(data).cert == before.cert  # nothing changed


def test_import_refuses_a_key_that_is_not_the_certificates(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert_path, _ = org_ca(tmp_path / "a")
    _, other_key = org_ca(tmp_path / "b")
    code, out = run("ca", "import", "--data-dir", str(tmp_path / "data"), "--cert", str(cert_path),
                    "--key", str(other_key))
    assert code == 2
    assert "the key is not the private key of the certificate" in out
    assert not (tmp_path / "data" / "ca.pem").exists()


def test_import_problems_small_rsa_key() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    assert import_problems(cert, key, NOW) == ["the RSA key has 1024 bits; at least 2048 are needed"]


# -- expiry warnings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "left", "expected"),
    [
        ("ca", 365 * DAY, None),
        ("ca", 91 * DAY, None),
        ("ca", 60 * DAY, "the CA expires in 60 days (2026-04-30); rotate it: rampart ca rotate"),
        ("ca", -DAY, "the CA expired on 2026-02-28"),
        ("tls-server", 60 * DAY, None),
        ("tls-server", 29 * DAY + dt.timedelta(hours=1),
         "served certificate tls-server expires in 29 days (2026-03-30); a running server"
         " reissues it within the hour"),
        ("tls-server", dt.timedelta(0), "served certificate tls-server expired on 2026-03-01"),
    ],
)
def test_warnings_for(name: str, left: dt.timedelta, expected: str | None) -> None:
    warnings = warnings_for([Expiry(name, "CN=x", NOW + left)], NOW)
    assert warnings == ([expected] if expected else [])


def test_expiry_warnings_reads_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ca = CA.ensure(data, days=60, now=NOW)
    served(data, ca, ["localhost"])
    names = [e.name for e in certificate_expiries(data)]
    assert names == ["ca", "tls-server"]
    # both end in 60 days: inside the CA's 90-day window, outside the leaf's 30-day one
    assert expiry_warnings(data, now=NOW) == [
        "the CA expires in 60 days (2026-04-30); rotate it: rampart ca rotate"
    ]
    later = expiry_warnings(data, now=NOW + 40 * DAY)
    assert [w.split(" expires")[0] for w in later] == ["the CA", "served certificate tls-server"]
    assert expiry_warnings(tmp_path / "empty", now=NOW) == []


def test_readiness_and_metrics_carry_certificate_expiry(tmp_path: Path) -> None:
    from proxy.config import Config
    from proxy.serve.app import App

    data = tmp_path / "data"
    CA.ensure(data, days=20)
    app = App(Config(data_dir=data))
    app.open()
    try:
        body = app.readiness()
        section = body["certificates"]
        assert [e["cert"] for e in section["expiry"]] == ["ca"]
        assert section["expiry"][0]["days_left"] in (19, 20)
        assert section["warnings"] and "the CA expires in" in section["warnings"][0]
        text = app._metrics().decode()
        line = next(ln for ln in text.splitlines() if ln.startswith('rampart_cert_expiry_seconds{cert="ca"}'))
        assert 19 * 86400 < float(line.rsplit(" ", 1)[1]) <= 20 * 86400
    finally:
        app.lists_store.close()
        app.engine.patterns.close()
