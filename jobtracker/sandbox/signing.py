"""Signed, expiring storage URLs in the style of GCS V2 signed URLs.

The signature is an HMAC-SHA256 over ``path + "\\n" + expires`` with a per-sandbox secret, so
the storage host can check a URL without any shared state besides the secret, and a URL with an
edited path, expiry or signature is refused exactly as the real bucket refuses it.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import quote, unquote, urlencode

ACCESS_ID = "sandbox@example.iam"


class Verdict(enum.Enum):
    """Outcome of checking a signed URL."""

    OK = "ok"
    MISSING = "missing"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"


def canonical_path(raw_path: str) -> str:
    """Re-encode each path segment the one way the signer does.

    Clients (and ``requests``) may legally re-encode a URL path, e.g. turn ``%7E`` into ``~``;
    decoding and re-quoting segment by segment makes the signature independent of that while
    keeping ``%2F`` inside a segment distinct from a real ``/``.
    """
    return "/".join(quote(unquote(segment), safe="") for segment in raw_path.split("/"))


class UrlSigner:
    """Signs and verifies storage URLs with one secret."""

    def __init__(self, secret: bytes, access_id: str = ACCESS_ID) -> None:
        self._secret = secret
        self.access_id = access_id

    def signature(self, path: str, expires: int) -> str:
        """URL-safe base64 HMAC of the canonical ``path`` and ``expires``."""
        message = f"{canonical_path(path)}\n{expires}".encode()
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode("ascii")

    def sign(self, path: str, expires: int) -> str:
        """Return ``path?Expires=..&GoogleAccessId=..&Signature=..`` for an already-quoted path."""
        query = urlencode(
            {
                "Expires": str(expires),
                "GoogleAccessId": self.access_id,
                "Signature": self.signature(path, expires),
            }
        )
        return f"{path}?{query}"

    def verify(self, path: str, query: Mapping[str, Sequence[str]], now: float) -> Verdict:
        """Check a request's path and parsed query string against the secret and ``now``.

        The signature is checked before the expiry so that a hand-edited ``Expires`` is a bad
        signature (403), not an expired token (400).
        """
        expires_values = query.get("Expires")
        signatures = query.get("Signature")
        if not expires_values or not signatures:
            return Verdict.MISSING
        try:
            expires = int(expires_values[-1])
        except ValueError:
            return Verdict.BAD_SIGNATURE
        expected = self.signature(path, expires)
        if not hmac.compare_digest(expected.encode(), signatures[-1].encode()):
            return Verdict.BAD_SIGNATURE
        if now > expires:
            return Verdict.EXPIRED
        return Verdict.OK
