"""Signing credentials for C2PA: a local key and certificate chain, or the user's own.

``condiff provenance keygen`` makes, with the ``cryptography`` package, an ECDSA P-256 key pair
and a two-certificate chain that c2pa-rs (the library under c2pa-python) accepts for signing:

* a CA certificate ("condiff local CA", self-signed, ``basicConstraints CA:TRUE, pathlen 0``,
  ``keyUsage keyCertSign, cRLSign``, subject key identifier), used as the trust anchor when
  verifying; its private key is discarded after issuing, so nothing else can be issued under it;
* an end-entity certificate (``CA:FALSE``, ``keyUsage digitalSignature`` critical,
  ``extendedKeyUsage emailProtection`` — one of the EKUs the C2PA certificate profile accepts,
  with subject and authority key identifiers), which signs the manifests (ES256).

Files live in ``$XDG_CONFIG_HOME/condiff/provenance`` (default ``~/.config/condiff/provenance``):
the folder is mode 0700, the private key 0600. A user's own certificate and key are used instead
when ``CONDIFF_C2PA_CERT`` and ``CONDIFF_C2PA_KEY`` name PEM files (``CONDIFF_C2PA_ALG`` sets the
algorithm, default from the key type), or after ``condiff provenance configure --cert --key``
recorded them in ``config.json`` there. Extra trust anchors: ``CONDIFF_C2PA_TRUST`` (PEM files
separated by ``os.pathsep``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, OutputError

__all__ = ["Credentials", "config_dir", "keygen", "load_credentials", "trust_anchors", "configure"]

KEY_FILE, CHAIN_FILE, CA_FILE, CONFIG_FILE = "signer.key", "signer-chain.pem", "ca.pem", "config.json"


@dataclass
class Credentials:
    """A signing key and its certificate chain (PEM bytes) with the C2PA algorithm name."""

    chain: bytes
    key: bytes
    alg: str
    source: str


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/condiff/provenance`` (``~/.config/…`` when the variable is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "condiff" / "provenance"


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write a file created with ``mode`` from the start (no window with wider permissions), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "condiff (local key)")])


def _key_usage(**on):
    from cryptography import x509

    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def make_chain(common_name: str = "condiff signer", days: int = 3650) -> tuple[bytes, bytes, bytes]:
    """(end-entity + CA chain PEM, end-entity private key PEM, CA certificate PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(minutes=5)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("condiff local CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(now + dt.timedelta(days=days + 1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    ee = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(_key_usage(digital_signature=True), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ee.public_bytes(pem) + ca.public_bytes(pem), key_pem, ca.public_bytes(pem)


def keygen(folder: Path | None = None, *, force: bool = False, common_name: str = "condiff signer") -> Path:
    """Create the local key and chain in ``folder`` (default :func:`config_dir`); refuses to replace one."""
    folder = Path(folder) if folder else config_dir()
    if (folder / KEY_FILE).exists() and not force:
        raise OutputError(f"a signing key exists in {folder}; pass --force to replace it (old signatures stay "
                          "valid but no longer chain to the new local CA)")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    chain, key, ca = make_chain(common_name)
    _write_private(folder / KEY_FILE, key, 0o600)
    _write_private(folder / CHAIN_FILE, chain, 0o644)
    _write_private(folder / CA_FILE, ca, 0o644)
    return folder


def configure(cert: Path, key: Path, alg: str | None = None, folder: Path | None = None) -> Path:
    """Record the user's own certificate chain and key (paths) in ``config.json``."""
    folder = Path(folder) if folder else config_dir()
    creds = _from_files(Path(cert), Path(key), alg, "option")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    record = {"cert": str(Path(cert).resolve()), "key": str(Path(key).resolve()), "alg": creds.alg}
    _write_private(folder / CONFIG_FILE, json.dumps(record, indent=1).encode(), 0o600)
    return folder / CONFIG_FILE


def _alg_for(key_pem: bytes) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    k = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(k, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(k.curve.name, "es256")
    if isinstance(k, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(k, rsa.RSAPrivateKey):
        return "ps256"
    raise InputError("the signing key is neither EC, Ed25519 nor RSA; give a key C2PA can use")


def _from_files(cert: Path, key: Path, alg: str | None, source: str) -> Credentials:
    for p, what in ((cert, "certificate"), (key, "private key")):
        if not p.is_file():
            raise InputError(f"the C2PA {what} {p} does not exist; fix the path or run `condiff provenance keygen`")
    chain, key_pem = cert.read_bytes(), key.read_bytes()
    if b"BEGIN CERTIFICATE" not in chain or b"PRIVATE KEY" not in key_pem:
        raise InputError(f"{cert} / {key} are not a PEM certificate chain and a PEM private key")
    try:
        alg = alg or _alg_for(key_pem)
    except ValueError as err:
        raise InputError(f"{key} cannot be read as an unencrypted PEM private key ({err})") from None
    return Credentials(chain, key_pem, alg, source)


def load_credentials() -> Credentials | None:
    """The credentials to sign with: environment, then config.json, then the local key; None if none."""
    env_cert, env_key = os.environ.get("CONDIFF_C2PA_CERT"), os.environ.get("CONDIFF_C2PA_KEY")
    alg = os.environ.get("CONDIFF_C2PA_ALG")
    if env_cert or env_key:
        if not (env_cert and env_key):
            raise InputError("set both CONDIFF_C2PA_CERT and CONDIFF_C2PA_KEY (or neither)")
        return _from_files(Path(env_cert), Path(env_key), alg, "environment")
    folder = config_dir()
    if (folder / CONFIG_FILE).is_file():
        rec = json.loads((folder / CONFIG_FILE).read_text())
        return _from_files(Path(rec["cert"]), Path(rec["key"]), rec.get("alg"), str(folder / CONFIG_FILE))
    if (folder / KEY_FILE).is_file() and (folder / CHAIN_FILE).is_file():
        return _from_files(folder / CHAIN_FILE, folder / KEY_FILE, alg, str(folder))
    return None


def trust_anchors(extra: list[Path] | None = None) -> str:
    """PEM text of the trust anchors: the local CA, ``CONDIFF_C2PA_TRUST`` files and ``extra``."""
    paths = [config_dir() / CA_FILE]
    paths += [Path(p) for p in os.environ.get("CONDIFF_C2PA_TRUST", "").split(os.pathsep) if p]
    paths += [Path(p) for p in extra or []]
    pems = []
    for p in paths:
        if p.is_file():
            pems.append(p.read_text())
        elif p != config_dir() / CA_FILE:
            raise InputError(f"trust anchor {p} does not exist; give a PEM certificate file")
    return "\n".join(pems)
