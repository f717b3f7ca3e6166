"""CVC secrets: generated with ``secrets``, verified against a keyed hash in constant time,
and kept encrypted (Fernet) only until the notification is confirmed sent. Never logged.

Keys. ``CVC_ENCRYPTION_KEY`` is the current key; ``CVC_OLD_KEYS`` (comma-separated) are retired
keys still needed to read rows made with them. From each, HKDF derives three independent
values: a public key id, the HMAC key of the hash and the Fernet key of the encrypted copy, so
the hash and the copy never share a key. Every row records the id of the key it was sealed
with (``cvc_key_id``): new writes use the current key, old rows still verify and decrypt, a
row that verifies with an old key is sealed again with the current one, and
``python app.py rotate-cvc-key`` re-seals every row whose plain CVC it can recover.

In development, with no ``CVC_ENCRYPTION_KEY``, a fixed development key is used. The JWT
secret plays no part: changing it never invalidates a CVC.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from config import get_settings

log = logging.getLogger("gcp.cvc")
#: Used only in development when CVC_ENCRYPTION_KEY is unset (production refuses to start).
DEV_CVC_KEY = "gcp-development-only-cvc-key-never-in-production"


@dataclass(frozen=True)
class CvcKey:
    """The three values derived from one configured secret."""

    id: str
    hmac_key: bytes
    fernet: Fernet


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


@functools.lru_cache(maxsize=16)
def derive(secret: str) -> CvcKey:
    raw = secret.encode()
    return CvcKey(id=_hkdf(raw, b"gcp-cvc-key-id").hex()[:12],
                  hmac_key=_hkdf(raw, b"gcp-cvc-hmac"),
                  fernet=Fernet(base64.urlsafe_b64encode(_hkdf(raw, b"gcp-cvc-fernet"))))


@dataclass(frozen=True)
class Keyring:
    current: CvcKey
    by_id: dict
    decrypter: MultiFernet
    legacy_hmac: bytes  # rows made before key ids existed (cvc_key_id NULL)


@functools.lru_cache(maxsize=8)
def _keyring(current: str, old: tuple[str, ...], legacy_material: str) -> Keyring:
    keys = [derive(current)] + [derive(k) for k in old]
    legacy_fernet = Fernet(base64.urlsafe_b64encode(
        hashlib.sha256(b"gcp-cvc-encryption:" + legacy_material.encode()).digest()))
    return Keyring(current=keys[0], by_id={k.id: k for k in keys},
                   decrypter=MultiFernet([k.fernet for k in keys] + [legacy_fernet]),
                   legacy_hmac=hashlib.sha256(b"gcp-cvc-hash:" + legacy_material.encode()).digest())


def keyring() -> Keyring:
    s = get_settings()
    legacy = s.cvc_encryption_key or ("dev-cvc-key:" + s.jwt_secret)
    return _keyring(s.cvc_encryption_key or DEV_CVC_KEY, s.cvc_old_keys, legacy)




def current_key_id() -> str:
    return keyring().current.id


def generate(length: int | None = None) -> str:
    """A fresh CVC: ``length`` (default ``CVC_LENGTH``) random digits."""
    n = length or get_settings().cvc_length
    return "".join(secrets.choice("0123456789") for _ in range(n))


def _mac(key: bytes, code: str, cvc: str) -> str:
    return hmac.new(key, f"{code}:{cvc}".encode(), hashlib.sha256).hexdigest()


def digest(code: str, cvc: str) -> str:
    """Keyed hash of a certificate's CVC with the current key (a stolen table is useless for
    brute force without the key)."""
    return _mac(keyring().current.hmac_key, code, cvc)


def hashed(code: str, cvc: str) -> dict:
    """The row fields of a CVC kept only as its hash (a physical card's printed CVC)."""
    return {"cvc_hash": digest(code, cvc), "cvc_key_id": current_key_id()}


def sealed(code: str, cvc: str) -> dict:
    """The row fields of a CVC kept as its hash and an encrypted copy (to be sent)."""
    return {**hashed(code, cvc), "cvc_encrypted": encrypt(cvc)}


def reseal(code: str, cvc: str, encrypted: str | None) -> dict:
    """The row fields of a CVC made with a retired key, sealed again with the current one
    (an encrypted copy stays a copy; a hash-only row stays hash-only)."""
    return sealed(code, cvc) if encrypted else hashed(code, cvc)


def matches(code: str, cvc: object, stored_digest: str | None, key_id: str | None = None) -> bool:
    """Constant-time comparison of a presented CVC with the stored hash, with the key the row
    was made with."""
    if not isinstance(cvc, str) or not stored_digest:
        return False
    ring = keyring()
    if key_id is None:
        key = ring.legacy_hmac
    else:
        found = ring.by_id.get(key_id)
        if found is None:
            log.error("a CVC was made with key id %s, which is not configured: keep that key in "
                      "CVC_OLD_KEYS", key_id)
            return False
        key = found.hmac_key
    return hmac.compare_digest(_mac(key, code, cvc), stored_digest)


def needs_reseal(key_id: str | None) -> bool:
    """True for a row made with another key than the current one."""
    return key_id != current_key_id()


def encrypt(cvc: str) -> str:
    return keyring().current.fernet.encrypt(cvc.encode()).decode()


def decrypt(token: str) -> str | None:
    """The plain CVC of an encrypted copy made with any configured key (None if none fits)."""
    try:
        return keyring().decrypter.decrypt(token.encode()).decode()
    except InvalidToken:
        return None
