"""Signed-URL handling: hide secrets before anything is printed, read a URL's expiry.

Signed storage URLs carry their credential in the query string (``Signature=``, and for other
clouds ``X-Amz-Signature``/``sig``...); database URLs may carry a password. Neither may reach a
log, an error message or command output.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_PARAMS = {
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "sig",
    "token",
    "key",
    "api_key",
    "apikey",
}
REDACTED = "REDACTED"


def redact_url(url: str | None) -> str | None:
    """Return ``url`` with signature-like query values and any userinfo password replaced."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="@"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_db_url(url: str) -> str:
    """Return a SQLAlchemy database URL with its password hidden."""
    from sqlalchemy.engine import make_url  # local: keep this module import-light

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is shown only by its scheme
        return url.split(":", 1)[0] + "://<unparseable>"


def url_expiry(url: str | None) -> datetime | None:
    """When a signed URL stops working, from its query string; ``None`` if it does not say.

    Understands GCS v2 / legacy Hume URLs (``Expires=<epoch seconds>``) and v4 signatures
    (``X-Goog-Date``/``X-Amz-Date`` plus ``X-Goog-Expires``/``X-Amz-Expires`` seconds).
    """
    if not url:
        return None
    try:
        query = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items() if v}
        if "expires" in query:
            return datetime.fromtimestamp(int(query["expires"]), tz=UTC)
        for prefix in ("x-goog-", "x-amz-"):
            if prefix + "date" in query and prefix + "expires" in query:
                signed = datetime.strptime(query[prefix + "date"], "%Y%m%dT%H%M%SZ")
                return signed.replace(tzinfo=UTC) + timedelta(
                    seconds=int(query[prefix + "expires"])
                )
    except (ValueError, OverflowError, OSError):
        return None
    return None


_SECRET_IN_TEXT = re.compile(
    r"(?i)\b("
    + "|".join(sorted(map(re.escape, _SECRET_PARAMS), key=len, reverse=True))
    + r")=([^&\s'\"]+)"
)


def redact_text(text: str) -> str:
    """Hide signature-like ``name=value`` pairs inside free text (exception messages)."""
    return _SECRET_IN_TEXT.sub(lambda m: f"{m[1]}={REDACTED}", text)
