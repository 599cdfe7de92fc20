"""Who may use the dashboard, and which requests may change anything (pure checks).

- With a token, every request must carry it: ``Authorization: Bearer T``, or the
  session cookie the login form sets (HttpOnly, SameSite=Strict). The cookie
  holds an HMAC of the token, never the token.
- A state-changing request is a POST whose ``Origin`` (when the client sends
  one: browsers always do) is the dashboard's own and whose
  ``Sec-Fetch-Site`` (when sent) is not ``cross-site``: a page on another site
  cannot make a browser act, even on a loopback dashboard without a token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

COOKIE = "taskdb_session"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves only this machine (``localhost``, 127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def session_value(token: str) -> str:
    """What the session cookie holds for ``token``."""
    return hmac.new(token.encode(), b"taskdb dashboard session", hashlib.sha256).hexdigest()


def authorized(token: str | None, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
    """Whether a request with these headers and cookies may use the dashboard."""
    if token is None:
        return True
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = cookies.get(COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a state-changing request comes from the dashboard's own pages (or from
    a client that is no browser: no ``Origin``, no ``Sec-Fetch-Site``). The host of
    ``Origin`` must be the ``Host`` the request was sent to (a reverse proxy must
    pass ``Host`` on); the scheme is not compared, so TLS ending at the proxy works."""
    if headers.get("sec-fetch-site", "same-origin") == "cross-site":
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()
