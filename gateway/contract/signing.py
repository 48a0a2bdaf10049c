"""Ed25519 keys: generation, loading, kid, signing and verification.

PROTOCOL.md "Identities": a key is named by its ``kid``, the first 16 lowercase
hex digits of SHA-256 over the 32-byte raw public key. Private keys are PKCS#8 PEM with mode
0600, public keys SubjectPublicKeyInfo PEM (OPERATOR.md ``keygen``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gateway.errors import KeyFileError

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def kid_of(public_raw: bytes) -> str:
    """The key id of a 32-byte raw Ed25519 public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def b64url(data: bytes) -> str:
    """base64url without padding (the ``sig`` encoding)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Inverse of ``b64url``; raises ValueError on anything that is not strict base64url."""
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key that may verify signatures, with its kid."""

    kid: str
    public: Ed25519PublicKey
    public_raw: bytes
    # libsodium (PyNaCl) for the hot path: ~1.7x faster to verify than OpenSSL here, and
    # Ed25519 is deterministic, so both give the same answers (tests/test_envelope.py).
    fast: nacl.signing.VerifyKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast", nacl.signing.VerifyKey(self.public_raw))

    @classmethod
    def from_raw(cls, public_raw: bytes) -> VerifyKey:
        return cls(kid_of(public_raw), Ed25519PublicKey.from_public_bytes(public_raw), public_raw)

    def verify(self, data: bytes, sig: str) -> bool:
        """True when ``sig`` (base64url) is this key's Ed25519 signature over ``data``."""
        try:
            raw = b64url_decode(sig)
            if len(raw) != 64:
                return False
            self.fast.verify(data, raw)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key and its public half."""

    private: Ed25519PrivateKey
    verify_key: VerifyKey
    fast: nacl.signing.SigningKey = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        seed = self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        object.__setattr__(self, "fast", nacl.signing.SigningKey(seed))

    @property
    def kid(self) -> str:
        return self.verify_key.kid

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        private = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(private, VerifyKey.from_raw(private.public_key().public_bytes(_RAW, _RAW_PUB)))

    @classmethod
    def generate(cls) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return cls(private, VerifyKey.from_raw(private.public_key().public_bytes(_RAW, _RAW_PUB)))

    def sign(self, data: bytes) -> str:
        """Ed25519 signature over ``data``, base64url without padding."""
        return b64url(self.fast.sign(data).signature)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return self.verify_key.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def key_mode_problem(path: Path) -> str | None:
    """A one-line problem when a private key file is readable by group or others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"{path}: private key has mode {mode:04o}, must be 0600 (chmod 600 {path})"
    return None


def load_signing_key(path: str | Path) -> SigningKey:
    """Load a PKCS#8 PEM Ed25519 private key; one-line KeyFileError on any problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{p}: cannot read private key: {err.strerror}") from err
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise KeyFileError(f"{p}: not a PEM private key ({err})") from err
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: not an Ed25519 key")
    raw = private.public_key().public_bytes(_RAW, _RAW_PUB)
    return SigningKey(private, VerifyKey.from_raw(raw))


def load_verify_key(path: str | Path) -> VerifyKey:
    """Load a SubjectPublicKeyInfo PEM Ed25519 public key."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{p}: cannot read public key: {err.strerror}") from err
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise KeyFileError(f"{p}: not a PEM public key ({err})") from err
    if not isinstance(public, Ed25519PublicKey):
        raise KeyFileError(f"{p}: not an Ed25519 public key")
    return VerifyKey.from_raw(public.public_bytes(_RAW, _RAW_PUB))


def write_keypair(
    out_dir: str | Path, name: str, *, force: bool = False
) -> tuple[SigningKey, Path, Path]:
    """``alarmgw keygen``: write DIR/NAME.key (0600, created with that mode, never briefly
    world-readable) and DIR/NAME.pub; refuse to overwrite unless ``force``, and refuse a
    symbolic link in either place always (writing through one would put the key, or
    overwrite a file, wherever the link points)."""
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r}: use a plain file name such as 'gateway'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.is_symlink():
            raise KeyFileError(f"{p}: is a symbolic link; refusing to write a key through it")
        if not force and p.exists():
            raise KeyFileError(f"{p}: exists; refusing to overwrite a key (use --force)")
    key = SigningKey.generate()
    _write_file(key_path, key.private_pem(), 0o600, replace=force)
    _write_file(pub_path, key.public_pem(), 0o644, replace=force)
    return key, key_path, pub_path


def _write_file(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write ``path`` durably with ``mode``, following no symbolic link: created new
    (O_EXCL), or, to ``replace`` it, written beside it and renamed over it atomically."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    if replace:
        target.unlink(missing_ok=True)  # a crashed run's; a link there is removed, not followed
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError as err:
        raise KeyFileError(f"{target}: exists; refusing to overwrite a key (use --force)") from err
    except OSError as err:
        raise KeyFileError(f"{target}: cannot write: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            target.replace(path)
    except OSError as err:
        if replace:
            target.unlink(missing_ok=True)
        raise KeyFileError(f"{path}: cannot write: {err.strerror}") from err
