"""JWT checks shared by the ``jwt`` and ``external`` modes.

A weak secret is refused at start-up (the hub will not run in a mode whose tokens
anyone can forge), and every decoding failure becomes a 401 with a short reason that
never echoes the token: whatever a token's header or segments hold (an algorithm the
key cannot verify, garbage base64, a non-object payload), the caller never sees a 500.
"""

from __future__ import annotations

from typing import Any

import jwt

from .base import AuthError

MIN_SECRET_LENGTH = 32
WEAK_SECRETS = {"", "test", "secret", "changeme", "change-me", "password", "jwt-secret"}


def check_secret(secret: str, *, source: str) -> None:
    """Refuse empty, well-known or short shared secrets (raise ``ValueError``)."""
    if secret.strip().lower() in WEAK_SECRETS:
        raise ValueError(f"{source} is empty or a well-known value; set a strong random secret")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{source} is too short ({len(secret)} characters; at least {MIN_SECRET_LENGTH})"
        )


def decode(
    token: str,
    key: Any,
    *,
    algorithms: list[str],
    issuer: str | None = None,
    audience: str | list[str] | None = None,
    leeway: float = 0,
) -> dict[str, Any]:
    """Verify signature, expiry and (when configured) issuer and audience; ``exp`` and
    ``sub`` are always required, ``iss`` and ``aud`` when an issuer or audience is given."""
    require = ["exp", "sub"]
    if issuer is not None:
        require.append("iss")
    if audience is not None:
        require.append("aud")
    options = {"require": require, "verify_aud": audience is not None}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            issuer=issuer,
            audience=audience,
            leeway=leeway,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "Token has expired") from None
    except jwt.MissingRequiredClaimError as e:
        raise AuthError(401, f"Token is missing the '{e.claim}' claim") from None
    except jwt.InvalidIssuerError:
        raise AuthError(401, "Token has the wrong issuer") from None
    except jwt.InvalidAudienceError:
        raise AuthError(401, "Token has the wrong audience") from None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError):
        # InvalidTokenError, and what a forged header can still raise from the key
        # handling (InvalidKeyError, InvalidAlgorithmError, ...): all the client's fault
        raise AuthError(401, "Invalid token") from None
    if not isinstance(claims, dict):
        raise AuthError(401, "Invalid token")
    return claims
