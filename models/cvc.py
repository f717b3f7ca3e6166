"""CVC secrets: generated with ``secrets``, verified against a keyed hash in constant time,
and kept encrypted (Fernet) only until the notification is confirmed sent. Never logged."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken

from config import get_settings


def _key_material() -> bytes:
    s = get_settings()
    return (s.cvc_encryption_key or ("dev-cvc-key:" + s.jwt_secret)).encode()


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"gcp-cvc-encryption:" + _key_material()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def generate(length: int | None = None) -> str:
    """A fresh CVC: ``length`` (default ``CVC_LENGTH``) random digits."""
    n = length or get_settings().cvc_length
    return "".join(secrets.choice("0123456789") for _ in range(n))


def digest(code: str, cvc: str) -> str:
    """Keyed hash of a certificate's CVC (the key makes a stolen table useless for brute force)."""
    key = hashlib.sha256(b"gcp-cvc-hash:" + _key_material()).digest()
    return hmac.new(key, f"{code}:{cvc}".encode(), hashlib.sha256).hexdigest()


def matches(code: str, cvc: object, stored_digest: str | None) -> bool:
    """Constant-time comparison of a presented CVC with the stored hash."""
    if not isinstance(cvc, str) or not stored_digest:
        return False
    return hmac.compare_digest(digest(code, cvc), stored_digest)


def encrypt(cvc: str) -> str:
    return _fernet().encrypt(cvc.encode()).decode()


def decrypt(token: str) -> str | None:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None
