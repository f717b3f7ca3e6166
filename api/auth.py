"""Bearer JWT authentication and scope/channel authorization.

Development: HS256 with ``JWT_SECRET``. Production: RS256 (or any asymmetric algorithm in
``JWT_ALGORITHMS``) with keys from ``JWKS_URL``, checking ``JWT_ISSUER`` and ``JWT_AUDIENCE``.
The token carries ``sub`` (client id), ``scope`` (space separated) and, for channels, ``channel``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass

import jwt
from flask import g, request

from api.errors import ApiError
from config import get_settings
from models.domain.states import CHANNELS

SCOPES = ("certificates:reserve", "certificates:read", "certificates:redeem", "certificates:cvc",
          "certificates:admin", "batches:write")
#: The JWKS's keys of this process (see :func:`key_set`).
_key_set: KeySet | None = None


@dataclass(frozen=True)
class Principal:
    client_id: str
    scopes: frozenset[str]
    channel: str | None
    #: The person, for the four-eyes rule: the ``ADMIN_IDENTITY_CLAIM`` claim (``sub`` by default).
    identity: str | None = None


def issue_token(client_id: str, scopes: str | list[str], channel: str | None = None,
                ttl_seconds: int = 3600) -> str:
    """A signed development token (HS256 with JWT_SECRET); `python app.py token` prints one."""
    settings = get_settings()
    now = int(time.time())
    claims = {"sub": client_id, "scope": scopes if isinstance(scopes, str) else " ".join(scopes),
              "iat": now, "exp": now + ttl_seconds}
    if channel:
        claims["channel"] = channel
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


#: The fewest seconds between two fetches of the JWKS for a ``kid`` it lacks: a new key is
#: fetched at once, but tokens naming made-up kids cannot make every request fetch the JWKS.
KID_REFETCH_S = 5.0
#: After a failed fetch the JWKS is not asked again for this long (each request would wait on it).
FETCH_RETRY_S = 1.0


class KeySet:
    """The signing keys of ``JWKS_URL``, by ``kid``.

    PyJWKClient's key cache never expires (a key withdrawn from the JWKS kept verifying until a
    restart) and its cool-down held a new key back for up to 30 s. Here the whole set is fetched
    again once it is ``lifetime`` (``JWKS_CACHE_SECONDS``) old, so a withdrawn key stops
    verifying within that time; a ``kid`` the set lacks fetches it at once, at most once per
    ``KID_REFETCH_S``. A stale set that cannot be fetched verifies nothing (401): it fails
    closed. ``version`` changes with the set's content, so remembered tokens are checked again.
    """

    def __init__(self, url: str, lifetime: float, timeout: float = 5.0):
        self.url, self.lifetime = url, lifetime
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self.version = ""
        self._fetched_at = self._kid_fetched_at = self._failed_at = -math.inf

    def current(self) -> str:
        """The version of a key set at most ``lifetime`` old (fetched again first if need be)."""
        if time.monotonic() - self._fetched_at >= self.lifetime:
            with self._lock:
                if time.monotonic() - self._fetched_at >= self.lifetime:
                    self._fetch()
        return self.version

    def key(self, kid: str | None):
        """The public key named ``kid``; a kid the set lacks fetches the set again (rate-bounded)."""
        self.current()
        found = self._keys.get(kid)
        if found is None:
            with self._lock:
                found = self._keys.get(kid)
                if found is None and time.monotonic() - self._kid_fetched_at >= KID_REFETCH_S:
                    self._kid_fetched_at = time.monotonic()
                    self._fetch()
                    found = self._keys.get(kid)
        if found is None:
            raise jwt.PyJWKClientError("the token's kid names no key of the JWKS")
        return found.key

    def _fetch(self) -> None:
        if time.monotonic() - self._failed_at < FETCH_RETRY_S:
            raise jwt.PyJWKClientConnectionError("the JWKS could not be fetched; retry shortly")
        try:
            data = self._client.fetch_data()
            keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(data).keys
                    if k.key_id and k.public_key_use in ("sig", None)}
        except (jwt.PyJWTError, ValueError):
            self._failed_at = time.monotonic()
            raise
        self._keys = keys
        self.version = hashlib.sha256(json.dumps(data.get("keys"), sort_keys=True).encode()).hexdigest()[:16]
        self._fetched_at = time.monotonic()


def key_set(settings) -> KeySet:
    """This process's :class:`KeySet` for the settings' JWKS (a new one when they change)."""
    global _key_set
    keys = _key_set
    if keys is None or (keys.url, keys.lifetime) != (settings.jwks_url, settings.jwks_cache_seconds):
        keys = _key_set = KeySet(settings.jwks_url, settings.jwks_cache_seconds)
    return keys


def _signing_key(token: str):
    settings = get_settings()
    if settings.jwks_url:
        return key_set(settings).key(jwt.get_unverified_header(token).get("kid"))
    return settings.jwt_secret


#: The leeway on ``exp`` (and ``nbf``, ``iat``), in seconds: clocks differ a little.
LEEWAY_S = 30


def decode(token: str) -> Principal:
    """The caller a bearer token names, or 401. A channel sends the same token on every call
    until it expires, so a verified one is remembered (the signature check and claims parsing
    were 11% of a balance read's web CPU); its expiry is checked again at every use, and the
    signature once per ``JWKS_CACHE_SECONDS`` period, when the verification settings change,
    or when the JWKS's keys change (a token whose key was withdrawn is refused within
    ``JWKS_CACHE_SECONDS``, remembered or not)."""
    settings, now = get_settings(), time.time()
    try:
        keys_version = key_set(settings).current() if settings.jwks_url else None
    except (jwt.PyJWTError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    principal, expires = _verified(token, settings.jwt_secret, settings.jwt_algorithms, settings.jwt_audience,
                                   settings.jwt_issuer, settings.jwks_url, settings.admin_identity_claim,
                                   keys_version, int(now // settings.jwks_cache_seconds))
    if now > expires + LEEWAY_S:
        raise _invalid("Signature has expired")
    return principal


@functools.lru_cache(maxsize=4096)
def _verified(token: str, *key) -> tuple[Principal, float]:
    """``decode``'s full check; ``key``: the settings it depends on, the JWKS's key-set version
    and the period (a new value is a new entry). Refusals raise, so they are never remembered."""
    settings = get_settings()
    try:
        claims = jwt.decode(
            token, _signing_key(token), algorithms=list(settings.jwt_algorithms),
            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
            # the audience is always checked: without JWT_AUDIENCE a token naming any audience is
            # meant for another service and refused; with it, the token must name it
            options={"require": ["sub", "exp"], "verify_aud": True}, leeway=LEEWAY_S)
    except (jwt.PyJWTError, ValueError) as exc:
        raise _invalid(str(exc)) from None
    scope = claims.get("scope") or ""
    if isinstance(scope, list) and all(isinstance(x, str) for x in scope):
        scope = " ".join(scope)
    if not isinstance(scope, str):
        raise _invalid("the scope claim must be a space-separated string")
    channel = claims.get("channel")
    if channel is not None and channel not in CHANNELS:  # never "no channel", i.e. every channel
        raise _invalid(f"the channel claim must be one of {', '.join(CHANNELS)}")
    scopes = frozenset(scope.split())
    identity = claims.get(settings.admin_identity_claim)
    if "certificates:admin" in scopes and not (isinstance(identity, str) and identity.strip()):
        # four eyes compares admins by this claim: an admin token without it names nobody
        raise _invalid(f"an admin token must carry the {settings.admin_identity_claim} claim "
                       "(ADMIN_IDENTITY_CLAIM)")
    identity = identity.strip() if isinstance(identity, str) else None
    return Principal(str(claims["sub"]), scopes, channel, identity), float(claims["exp"])


def _invalid(why: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", f"invalid token: {why}",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def current_principal() -> Principal:
    """The caller of this request (401 without a valid bearer token)."""
    principal = g.get("principal")
    if principal is not None:
        return principal
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise ApiError(401, "UNAUTHORIZED", "missing bearer token",
                       headers={"WWW-Authenticate": "Bearer"})
    g.principal = decode(token.strip())
    return g.principal


def require(*scopes: str):
    """Decorator: the caller needs one of ``scopes`` (403 ``FORBIDDEN`` otherwise)."""
    def wrap(view):
        @functools.wraps(view)
        def inner(*args, **kwargs):
            principal = current_principal()
            if not principal.scopes.intersection(scopes):
                raise ApiError(403, "FORBIDDEN", f"requires scope {' or '.join(scopes)}",
                               required=list(scopes))
            return view(*args, **kwargs)
        inner._required_scopes = scopes
        return inner
    return wrap


def service_context(channel: str | None = None, order_id: str | None = None):
    """The use-case :class:`~models.domain.commands.Context` of this request: who, for which channel,
    the request id (the stream's ``causationId``) and the order it concerns."""
    from models.domain.commands import Context

    principal = current_principal()
    return Context(actor=principal.client_id, channel=channel or principal.channel,
                   request_id=g.get("request_id"), correlation_id=order_id, identity=principal.identity)


def check_channel(channel: str | None) -> None:
    """A channel token may act only for its own channel (403 ``CHANNEL_FORBIDDEN``)."""
    principal = current_principal()
    if principal.channel and channel and principal.channel != channel:
        raise ApiError(403, "CHANNEL_FORBIDDEN",
                       f"token of channel {principal.channel} cannot act for {channel}",
                       tokenChannel=principal.channel, channel=channel)
