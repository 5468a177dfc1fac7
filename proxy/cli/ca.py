"""``rampart ca``: create, show, export, import and rotate the appliance CA.

The work is done in ``certs``; these commands only parse options and print. The CA
key is never printed or exported.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from certs.expiry import days_left
from certs.follow import POLL_SECONDS
from proxy.cli.common import (
    F,
    Run,
    config_file_option,
    data_dir_option,
    fail_cleanly,
    json_option,
    pass_run,
)
from proxy.clock import utcnow
from proxy.errors import ConfigError

KEY_TYPES = click.Choice(["ec-p256", "rsa-2048"])


def _where(fn: F) -> F:
    """``--data-dir`` and ``--config``: where the CA lives (``Run.data_dir``)."""
    fn = config_file_option("Take the data directory from this TOML config file.")(fn)
    return data_dir_option(fn)


def describe_ca(data_dir: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """What ``rampart ca show`` prints, as a dict (also its ``--json``)."""
    import certs
    from certs import expiry, rotate
    from certs.ca import fingerprint

    now = now or utcnow()
    ca = certs.CA.load(data_dir)
    members = rotate.refresh_bundle(data_dir, now=now)
    cert = ca.cert
    return {
        "subject": ca.subject_text(),
        "sha256": ca.fingerprint_sha256(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": days_left(cert.not_valid_after_utc, now),
        "key": rotate.key_description(ca.key),
        "certificate": str(data_dir / certs.CA_CERT_FILE),
        "bundle": [
            {"subject": c.subject.rfc4514_string(), "sha256": fingerprint(c)} for c in members
        ],
        "retired": [
            {"sha256": fingerprint(r.cert), "until": r.until.isoformat()}
            for r in rotate.load_retired(data_dir)
        ],
        "issued": [
            {"name": e.name, "not_after": e.not_after.isoformat(),
             "days_left": e.days_left(now)}
            for e in expiry.certificate_expiries(data_dir) if e.name != "ca"
        ],
        "serving": serving_now(data_dir, ca.fingerprint_sha256()),
        "poll_seconds": POLL_SECONDS,
        "warnings": expiry.warnings_for(expiry.certificate_expiries(data_dir), now),
    }


def serving_now(data_dir: Path, current: str) -> list[dict[str, Any]]:
    """What the doors of a running server present, from the records they keep
    (``certs.serving``): the files alone cannot tell, a server takes them up to
    ``POLL_SECONDS`` after they change."""
    from certs import serving

    return [
        {"door": s.door, "ca_sha256": s.ca_sha256, "current": s.ca_sha256 == current,
         "certificate_sha256": s.certificate_sha256, "pid": s.pid, "since": s.since}
        for s in serving.running(data_dir)
    ]


DOOR_NAMES = {"query": "query door (HTTPS)", "intercept": "intercept door", "console": "console door (HTTPS)"}


def _serving_lines(info: dict[str, Any]) -> list[str]:
    if not info["serving"]:
        return ["no running server on this data directory (one started now presents this CA)"]
    retired = {r["sha256"] for r in info["retired"]}
    lines = []
    for entry in info["serving"]:
        door = DOOR_NAMES.get(entry["door"], entry["door"])
        where = f"{door}, pid {entry['pid']}"
        if entry["current"]:
            lines.append(f"{where}: this CA since {entry['since']}")
            continue
        which = "the former CA" if entry["ca_sha256"] in retired else "another CA"
        lines.append(
            f"{where}: still {which} {entry['ca_sha256']}; a running server takes a new CA "
            f"within {info['poll_seconds']:g} s (if this lasts, its log says why)"
        )
    return lines


@click.group("ca")
def ca_group() -> None:
    """The appliance CA: what products trust for intercepted hosts and the HTTPS doors."""


@ca_group.command("init")
@_where
@click.option("--common-name", default="Rampart Appliance CA", show_default=True,
              help="The CA's common name, as products will show it.")
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True,
              help="Validity in days.")
@click.option("--key-type", type=KEY_TYPES, default="ec-p256", show_default=True,
              help="Key algorithm (rsa-2048 for old products without ECDSA).")
@pass_run
@fail_cleanly
def ca_init(run: Run, common_name: str, days: int, key_type: str) -> None:
    """Create the appliance CA in the data directory (key 0600). Refuses to replace one."""
    import certs

    where = run.data_dir
    for name in (certs.CA_CERT_FILE, certs.CA_KEY_FILE):
        if (where / name).exists():
            raise ConfigError(
                f"{where / name} already exists; use `rampart ca rotate` to replace the CA "
                "or `rampart ca import` to install your own"
            )
    ca = certs.CA.ensure(where, common_name=common_name, days=days, key_type=certs.KeyType(key_type))
    from certs import rotate

    rotate.refresh_bundle(where)
    click.echo(f"created CA {ca.subject_text()}")
    click.echo(f"  SHA-256 {ca.fingerprint_sha256()}")
    click.echo(f"  certificate for products: {where / certs.CA_CERT_FILE}")


@ca_group.command("show")
@_where
@json_option("Print JSON.")
@pass_run
@fail_cleanly
def ca_show(run: Run) -> None:
    """Show the CA's subject, fingerprint, validity, key type and bundle, the certificates
    issued from it, and what the doors of a running server present now."""
    info = describe_ca(run.existing_data_dir())
    if run.as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"subject      {info['subject']}")
    click.echo(f"SHA-256      {info['sha256']}")
    click.echo(f"not before   {info['not_before']}")
    click.echo(f"not after    {info['not_after']}  ({info['days_left']} days left)")
    click.echo(f"key          {info['key']}")
    click.echo(f"certificate  {info['certificate']}")
    for entry in info["retired"]:
        click.echo(f"also trusted until {entry['until']} (overlap): {entry['sha256']}")
    for entry in info["issued"]:
        click.echo(f"issued       {entry['name']}  until {entry['not_after']}  "
                   f"({entry['days_left']} days left)")
    for line in _serving_lines(info):
        click.echo(f"serving      {line}")
    for line in info["warnings"]:
        click.echo(f"warning: {line}")


@ca_group.command("export")
@_where
@click.option("--format", "fmt", type=click.Choice(["pem", "der"]), default="pem", show_default=True,
              help="PEM (most products) or DER (.cer/.crt for Windows).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), required=True,
              help="File to write, or - for standard output (PEM only).")
@click.option("--bundle", is_flag=True,
              help="Export the overlap bundle (current and still-trusted former CAs; PEM only).")
@pass_run
@fail_cleanly
def ca_export(run: Run, fmt: str, out: Path, bundle: bool) -> None:
    """Export the CA certificate for products to trust. Never the key."""
    import certs
    from certs import rotate

    where = run.existing_data_dir()
    ca = certs.CA.load(where)
    if bundle:
        if fmt != "pem":
            raise ConfigError("--bundle holds several certificates and is PEM only")
        from cryptography.hazmat.primitives import serialization

        members = rotate.refresh_bundle(where)
        data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in members)
    else:
        data = certs.export_pem(ca) if fmt == "pem" else certs.export_der(ca)
    if str(out) == "-":
        if fmt == "der":
            raise ConfigError("DER is binary; give --out FILE")
        click.echo(data.decode("ascii"), nl=False)
        return
    from certs.files import write_pem

    write_pem(out, data, private=False)
    click.echo(f"wrote {out} ({fmt.upper()}, SHA-256 {ca.fingerprint_sha256()})", err=True)


OVERLAP = click.option(
    "--overlap-days", type=click.IntRange(0, 3650), default=30, show_default=True,
    help="Days the former CA stays in DATA_DIR/ca-bundle.pem so products trusting the bundle "
         "keep working (0: drop it now).",
)


def _report(result: Any, verb: str) -> None:
    click.echo(f"{verb} CA {result.ca.subject_text()}")
    click.echo(f"  SHA-256 {result.ca.fingerprint_sha256()}")
    if result.overlap_until is not None:
        click.echo(f"  former CA stays in ca-bundle.pem until {result.overlap_until:%Y-%m-%d %H:%M} UTC")
    click.echo("  reissued: " + (", ".join(result.reissued) or "no served certificates yet"))
    click.echo(f"  a running `rampart serve` presents certificates from it within {POLL_SECONDS:g} s "
               "(new connections; see `rampart ca show`)")


@ca_group.command("import")
@_where
@click.option("--cert", "cert_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="The CA certificate (PEM).")
@click.option("--key", "key_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="The CA private key (PEM, unencrypted).")
@OVERLAP
@pass_run
@fail_cleanly
def ca_import(run: Run, cert_file: Path, key_file: Path, overlap_days: int) -> None:
    """Install your organisation's own CA (checked: a CA, its key, valid now)."""
    from certs import rotate

    result = rotate.import_ca(run.data_dir, cert_file, key_file,
                              overlap_days=overlap_days)
    _report(result, "imported")


@ca_group.command("rotate")
@_where
@OVERLAP
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True,
              help="Validity of the new CA in days.")
@click.option("--key-type", type=KEY_TYPES, help="Key algorithm (default: the current CA's).")
@click.option("--common-name", help="Common name (default: the current one with today's date).")
@pass_run
@fail_cleanly
def ca_rotate(run: Run, overlap_days: int, days: int, key_type: str | None,
              common_name: str | None) -> None:
    """Replace the CA with a new one; the former stays in the bundle for the overlap."""
    import certs
    from certs import rotate

    result = rotate.rotate(
        run.data_dir, overlap_days=overlap_days, days=days,
        key_type=certs.KeyType(key_type) if key_type else None, common_name=common_name,
    )
    _report(result, "rotated to")
