"""Signing keys: ed25519 and ECDSA P-256, public and private, loading and making them.

Keys are ed25519 (the default, like ``ssh-keygen -t ed25519``) or ECDSA
P-256 (which the OpenSSF model-signing tools also accept, so one key can sign
both commits and exported manifests). A private key file is OpenSSH
(``-----BEGIN OPENSSH PRIVATE KEY-----``, what ``ssh-keygen`` and
``mfgit keygen`` write for ed25519) or PEM PKCS#8; the user's own
``~/.ssh/id_ed25519`` works as it is.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfgit.errors import SigningKeyError
from mfgit.store.fileio import atomic_write

FORMATS = ("ed25519", "ecdsa-p256")
SSH_TYPES = {"ssh-ed25519": "ed25519", "ecdsa-sha2-nistp256": "ecdsa-p256"}
PASSPHRASE_ENV = "MFGIT_SIGNING_PASSPHRASE"


def _crypto():
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise SigningKeyError("-", "the 'cryptography' package is needed for signing: pip install cryptography") from None
    return hashes, serialization, ec, ed25519


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except Exception:
        raise ValueError(f"{what} is not valid base64") from None


# -- public keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    """An ed25519 or ECDSA P-256 public key."""

    key: Any  # a cryptography public key object

    @property
    def format(self) -> str:
        _, _, ec, ed25519 = _crypto()
        if isinstance(self.key, ed25519.Ed25519PublicKey):
            return "ed25519"
        if isinstance(self.key, ec.EllipticCurvePublicKey) and self.key.curve.name == "secp256r1":
            return "ecdsa-p256"
        raise SigningKeyError("-", "only ed25519 and ECDSA P-256 keys are supported")

    def raw(self) -> bytes:
        _, serialization, _, _ = _crypto()
        if self.format == "ed25519":
            return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return self.key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    def openssh(self) -> str:
        """``ssh-ed25519 AAAA…`` (the line of a .pub file, without comment)."""
        _, serialization, _, _ = _crypto()
        return self.key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")

    def pem(self) -> bytes:
        _, serialization, _, _ = _crypto()
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def key_id(self) -> str:
        """The OpenSSH SHA-256 fingerprint: ``SHA256:`` + unpadded base64."""
        blob = base64.b64decode(self.openssh().split()[1])
        return "SHA256:" + _b64(hashlib.sha256(blob).digest()).rstrip("=")

    def verify(self, sig: bytes, data: bytes) -> bool:
        hashes, _, ec, _ = _crypto()
        from cryptography.exceptions import InvalidSignature

        try:
            if self.format == "ed25519":
                self.key.verify(sig, data)
            else:
                self.key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_raw(cls, fmt: str, raw: bytes) -> "PublicKey":
        _, _, ec, ed25519 = _crypto()
        if fmt == "ed25519":
            if len(raw) != 32:
                raise ValueError(f"an ed25519 public key has 32 bytes, not {len(raw)}")
            return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw))
        if fmt == "ecdsa-p256":
            return cls(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw))
        raise ValueError(f"unknown signature format {fmt!r} (known: {', '.join(FORMATS)})")

    @classmethod
    def from_openssh(cls, line: str) -> "PublicKey":
        _, serialization, _, _ = _crypto()
        parts = line.split()
        if len(parts) < 2:
            raise ValueError("expected 'KEYTYPE BASE64 [comment]'")
        if parts[0] in FORMATS:  # the raw form used in a signature's public_key
            return cls.from_raw(parts[0], unb64(parts[1], "the key"))
        if parts[0] not in SSH_TYPES:
            raise ValueError(f"key type {parts[0]!r} is not supported (use {', '.join(sorted(SSH_TYPES))})")
        try:
            key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode("ascii"))
        except Exception as e:
            raise ValueError(f"not a valid {parts[0]} public key ({e})") from None
        pk = cls(key)
        pk.format  # noqa: B018 - raises for unsupported curves
        return pk


# -- private keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    path: str
    private: Any

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.private.public_key())

    def sign(self, data: bytes) -> bytes:
        hashes, _, ec, _ = _crypto()
        if self.public.format == "ed25519":
            return self.private.sign(data)
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

        try:  # RFC 6979 deterministic ECDSA where cryptography has it
            algo = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        except TypeError:  # pragma: no cover - older cryptography
            algo = ec.ECDSA(hashes.SHA256())
        r, s = decode_dss_signature(self.private.sign(data, algo))
        # (r, n - s) verifies too; the object schema accepts only the low-S
        # form, so that no one can give a signed object a second id.
        n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        return encode_dss_signature(r, min(s, n - s))

    def signature_for(self, payload: bytes) -> dict[str, str]:
        pub = self.public
        return {"format": pub.format, "public_key": _b64(pub.raw()), "key_id": pub.key_id,
                "sig": _b64(self.sign(payload))}


def _load_private(p: Path, data: bytes):
    """Parse an OpenSSH or PEM private key, with $MFGIT_SIGNING_PASSPHRASE if it is encrypted."""
    _, serialization, _, _ = _crypto()
    from cryptography.exceptions import UnsupportedAlgorithm

    passphrase = os.environ.get(PASSPHRASE_ENV)
    pw = passphrase.encode() if passphrase else None
    openssh = b"OPENSSH PRIVATE KEY" in data
    loader = serialization.load_ssh_private_key if openssh else serialization.load_pem_private_key
    kind = "OpenSSH" if openssh else "PEM"
    try:
        return loader(data, pw)
    except TypeError:
        if pw is None:
            raise SigningKeyError(str(p), f"is encrypted; set {PASSPHRASE_ENV} to its passphrase") from None
        try:  # a passphrase was set but this key is not encrypted
            return loader(data, None)
        except Exception as e:  # noqa: BLE001
            raise SigningKeyError(str(p), f"is not a valid {kind} private key ({e})") from None
    except UnsupportedAlgorithm as e:
        hint = " (encrypted OpenSSH keys need the bcrypt package: pip install bcrypt)" if "bcrypt" in str(e) else ""
        raise SigningKeyError(str(p), f"cannot be opened: {e}{hint}") from None
    except ValueError as e:
        wrong = " (wrong passphrase?)" if pw is not None and (openssh or b"ENCRYPTED" in data) else ""
        raise SigningKeyError(str(p), f"is not a valid {kind} private key{wrong} ({e})") from None


def load_signing_key(path: str | os.PathLike, *, check_mode: bool = True) -> SigningKey:
    """Load an OpenSSH or PEM private key (ed25519 or ECDSA P-256).

    A passphrase-protected key is opened with $MFGIT_SIGNING_PASSPHRASE. Like
    ssh, a key file readable by group or others is refused.
    """
    _, serialization, ec, ed25519 = _crypto()
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise SigningKeyError(str(p), "does not exist") from None
    except OSError as e:
        raise SigningKeyError(str(p), f"cannot be read ({e.strerror})") from None
    if check_mode and os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(str(p), f"is readable by others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {p}")
    if data.lstrip().startswith(b"ssh-") or data.lstrip().startswith(b"ecdsa-"):
        raise SigningKeyError(str(p), "is a public key; give the private key file (without .pub)")
    key = _load_private(p, data)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey(str(p), key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise SigningKeyError(str(p), f"ECDSA curve {key.curve.name} is not supported for commits (use P-256)")
        return SigningKey(str(p), key)
    raise SigningKeyError(str(p), f"{type(key).__name__} keys are not supported; use ed25519 (mfgit keygen)")


def load_ec_private_key(path: str | os.PathLike):
    """An ECDSA private key (P-256/P-384/P-521) for OpenSSF model signing."""
    _, serialization, ec, _ = _crypto()
    p = Path(path).expanduser()
    key = load_signing_key_any(p)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningKeyError(
            str(p), "model-signing's key method verifies only ECDSA keys (P-256, P-384, P-521); make one with "
            "mfgit keygen --type ecdsa-p256 PATH and set: mfgit config signing.manifestKey PATH")
    return key


def load_signing_key_any(p: Path):
    """The private key object at `p`, of any type cryptography reads."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(str(p), "does not exist") from None
    except OSError as e:
        raise SigningKeyError(str(p), f"cannot be read ({e.strerror})") from None
    return _load_private(p, data)


def keygen(path: str | os.PathLike, *, key_type: str = "ed25519", comment: str | None = None,
           force: bool = False) -> dict[str, Any]:
    """Write a new private key (mode 0600) at `path` and its public key at `path`.pub.

    ed25519 keys are written in OpenSSH format (as ssh-keygen does); ECDSA
    P-256 keys as PEM PKCS#8, with the public key also as PEM at
    `path`.pub.pem (what ``model_signing verify key --public_key`` reads).
    """
    _, serialization, ec, ed25519 = _crypto()
    p = Path(path).expanduser()
    pub_path = p.with_name(p.name + ".pub")
    if key_type not in FORMATS:
        raise SigningKeyError(str(p), f"unknown key type {key_type!r}; use one of {', '.join(FORMATS)}")
    if not force and (p.exists() or pub_path.exists()):
        raise SigningKeyError(str(p), "already exists; choose another path or pass --force")
    p.parent.mkdir(parents=True, exist_ok=True)
    if key_type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        data = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                     serialization.NoEncryption())
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        data = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    atomic_write(p, data, mode=0o600)
    pub = PublicKey(private.public_key())
    comment = comment if comment is not None else ""
    line = pub.openssh() + (f" {comment}" if comment else "")
    pub_path.write_text(line + "\n", encoding="ascii")
    out = {"private_key": str(p), "public_key": str(pub_path), "type": key_type, "key_id": pub.key_id,
           "openssh": pub.openssh(), "allowed_signers_line": f"* {line}"}
    if key_type != "ed25519":
        pem_path = p.with_name(p.name + ".pub.pem")
        pem_path.write_bytes(pub.pem())
        out["public_key_pem"] = str(pem_path)
    return out
