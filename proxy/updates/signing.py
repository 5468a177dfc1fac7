"""Ed25519 keys for the update source: generating, loading, signing
(docs/architecture.md, “Patterns and updates”).

``proxy.updates.publish`` signs the manifest with a private key; readers
(``proxy.updates.repo.load_manifest``, the updater) check it with the public key.
Keys are PEM (PKCS#8 private, SubjectPublicKeyInfo public); a public key may
also be given as its raw 32 bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from proxy.errors import ConfigError, PatternError
from proxy.files import PRIVATE_DIR, PRIVATE_FILE, PUBLIC_FILE, make_dirs, read_bounded, write_atomic

logger = logging.getLogger(__name__)

MAX_KEY_BYTES = 1 << 16
"""The largest key file read (an Ed25519 PEM key is about 120 bytes)."""


def keygen(out: Path, *, force: bool = False) -> Path:
    """Write a new Ed25519 private key to ``out`` (PEM, mode 0600) and the public key to out.pub.

    Missing folders above ``out`` are made 0700 (they hold a private key). An
    existing key, or public key, is refused (ConfigError naming it) unless
    ``force``: replacing a signing key strands every appliance that trusts the old one.
    """
    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    if not force:
        for path in (out, pub):
            if path.exists() or path.is_symlink():
                raise ConfigError(f"{path} exists; refusing to overwrite a key (appliances that "
                                  "trust it would refuse what is signed with a new one); give "
                                  "--force to replace it, or another --out")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        make_dirs(out.parent, PRIVATE_DIR)
    except OSError as e:
        what = "it is not a folder" if isinstance(e, FileExistsError) else e.strerror or e
        raise PatternError(f"cannot create {e.filename or out.parent}: {what}") from None
    try:
        if force:
            write_atomic(out, private_pem, mode=PRIVATE_FILE)
        else:
            _create(out, private_pem)
        write_atomic(pub, public_pem, mode=PUBLIC_FILE)  # public, but never writable by others
    except FileExistsError:
        raise ConfigError(f"{out} exists; refusing to overwrite a key; give --force to replace "
                          "it, or another --out") from None
    except OSError as e:
        where = e.filename or out
        raise PatternError(f"cannot create {where}: {e.strerror or e}") from None
    logger.info("wrote a new Ed25519 key pair %s, %s", out, pub)
    return pub


def _create(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), PRIVATE_FILE)  # in case the umask or an ACL changed it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = read_bounded(path, MAX_KEY_BYTES, error=PatternError, label=path.name)
        key = serialization.load_pem_private_key(data, password=None)
    except OSError as e:
        raise PatternError(f"{path.name}: cannot read key: {e.strerror or e}") from None
    except (ValueError, TypeError) as e:
        raise PatternError(f"{path.name}: not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PatternError(f"{path.name}: not an Ed25519 private key")
    return key


def load_public_key(data: bytes | Path | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes, raw 32 bytes, or a file holding either."""
    if isinstance(data, Ed25519PublicKey):
        return data
    what = "public key"
    if isinstance(data, Path):
        what = data.name
        try:
            data = read_bounded(data, MAX_KEY_BYTES, error=PatternError, label=what)
        except OSError as e:
            raise PatternError(f"{what}: cannot read: {e.strerror or e}") from None
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise PatternError(f"{what}: not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PatternError(f"{what}: not an Ed25519 public key")
    return key


def sign(raw: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(raw)
