"""Bearer JWT authentication and scope/channel authorization.

Development: HS256 with ``JWT_SECRET``. Production: RS256 (or any asymmetric algorithm in
``JWT_ALGORITHMS``) with keys from ``JWKS_URL``, checking ``JWT_ISSUER`` and ``JWT_AUDIENCE``.
The token carries ``sub`` (client id), ``scope`` (space separated) and, for channels, ``channel``.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import jwt
from flask import g, request

from api.errors import ApiError
from config import get_settings
from models.domain import CHANNELS

SCOPES = ("certificates:reserve", "certificates:read", "certificates:redeem", "certificates:cvc",
          "certificates:admin", "batches:write")
_jwks_client: jwt.PyJWKClient | None = None


@dataclass(frozen=True)
class Principal:
    client_id: str
    scopes: frozenset[str]
    channel: str | None


def issue_token(client_id: str, scopes: str | list[str], channel: str | None = None,
                ttl_seconds: int = 3600) -> str:
    """A signed development token (HS256 with JWT_SECRET); `python app.py token` prints one."""
    s = get_settings()
    now = int(time.time())
    claims = {"sub": client_id, "scope": scopes if isinstance(scopes, str) else " ".join(scopes),
              "iat": now, "exp": now + ttl_seconds}
    if channel:
        claims["channel"] = channel
    if s.jwt_issuer:
        claims["iss"] = s.jwt_issuer
    if s.jwt_audience:
        claims["aud"] = s.jwt_audience
    return jwt.encode(claims, s.jwt_secret, algorithm="HS256")


def _signing_key(token: str):
    global _jwks_client
    s = get_settings()
    if s.jwks_url:
        if _jwks_client is None:
            _jwks_client = jwt.PyJWKClient(s.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        return _jwks_client.get_signing_key_from_jwt(token).key
    return s.jwt_secret


#: The leeway on ``exp`` (and ``nbf``, ``iat``), in seconds: clocks differ a little.
LEEWAY_S = 30
#: How long a verified token is taken on trust before its signature is checked again, in seconds
#: (also how long a key withdrawn from the JWKS keeps working: the JWKS client's own lifespan).
REVERIFY_S = 300


def decode(token: str) -> Principal:
    """The caller a bearer token names, or 401. A channel sends the same token on every call
    until it expires, so a verified one is remembered (the signature check and claims parsing
    were 11% of a balance read's web CPU); its expiry is checked again at every use, and the
    signature once per ``REVERIFY_S`` period or when the verification settings change."""
    s, now = get_settings(), time.time()
    principal, expires = _verified(token, s.jwt_secret, s.jwt_algorithms, s.jwt_audience, s.jwt_issuer,
                                   s.jwks_url, int(now // REVERIFY_S))
    if now > expires + LEEWAY_S:
        raise _invalid("Signature has expired")
    return principal


@functools.lru_cache(maxsize=4096)
def _verified(token: str, *key) -> tuple[Principal, float]:
    """``decode``'s full check; ``key``: the settings it depends on and the period (a new
    value is a new entry). Refusals raise, so they are never remembered."""
    s = get_settings()
    try:
        claims = jwt.decode(
            token, _signing_key(token), algorithms=list(s.jwt_algorithms),
            audience=s.jwt_audience, issuer=s.jwt_issuer,
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
    return Principal(str(claims["sub"]), frozenset(scope.split()), channel), float(claims["exp"])


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
    """The use-case :class:`~models.unit_of_work.Context` of this request: who, for which channel,
    the request id (the stream's ``causationId``) and the order it concerns."""
    from models.unit_of_work import Context

    principal = current_principal()
    return Context(actor=principal.client_id, channel=channel or principal.channel,
                   request_id=g.get("request_id"), correlation_id=order_id)


def check_channel(channel: str | None) -> None:
    """A channel token may act only for its own channel (403 ``CHANNEL_FORBIDDEN``)."""
    principal = current_principal()
    if principal.channel and channel and principal.channel != channel:
        raise ApiError(403, "CHANNEL_FORBIDDEN",
                       f"token of channel {principal.channel} cannot act for {channel}",
                       tokenChannel=principal.channel, channel=channel)
