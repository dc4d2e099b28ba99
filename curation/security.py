"""Passwords, session tokens and CSRF tokens for the annotator app.

- Passwords are stored as scrypt hashes (a memory-hard KDF from the standard library) with a
  random salt and the cost parameters in the string, so the cost can be raised later and old
  hashes still verify.
- Session tokens are 256-bit random strings; the database stores only their SHA-256, so a
  leaked database copy does not let anyone log in as an annotator.
- Each session has its own CSRF token. Form posts carry it in a hidden field, JSON calls in the
  ``X-CSRF-Token`` header (a custom header cannot be sent cross-site without a CORS preflight,
  which this app never grants). The login form, which has no session yet, uses a double-submit
  cookie instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = [
    "hash_password",
    "verify_password",
    "new_token",
    "token_digest",
    "tokens_equal",
    "SESSION_COOKIE",
    "LOGIN_CSRF_COOKIE",
    "CSRF_HEADER",
]

SESSION_COOKIE = "rev_session"
LOGIN_CSRF_COOKIE = "rev_login_csrf"
CSRF_HEADER = "x-csrf-token"

# scrypt cost: N=2**14, r=8 uses 16 MiB and ~50 ms per check on a laptop core (OWASP's minimum
# recommendation is N=2**17 with r=8 p=1 at 128 MiB; raise it with ``n=`` on a server).
_N, _R, _P = 2**14, 8, 1
_DKLEN = 32


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """``scrypt$N$r$p$salt$hash``: self-describing, so verification needs nothing else."""
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=256 * 1024 * 1024)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check; a malformed stored hash verifies nothing (never raises)."""
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt":
            return False
        dk = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(_unb64(want)), maxmem=256 * 1024 * 1024
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk, _unb64(want))


# A fixed hash to verify against when the user does not exist, so a login attempt takes the
# same time whether or not the name is known (no user enumeration by timing).
DUMMY_HASH = hash_password("not-a-real-password")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())
