"""Short codes and the checks on what users send.

The code of a url is the training's: the MD5 of the url read as one big
integer, truncated to its low 32 bits, packed big-endian as 4 bytes, then
URL-safe Base64 without the ``=`` padding: always 6 characters.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

__all__ = ["MAX_CODE_LENGTH", "MAX_URL_LENGTH", "check_code", "check_url", "short_code"]

#: Longest code a user may choose, and longest url accepted (browsers cope with ~2000).
MAX_CODE_LENGTH = 64
MAX_URL_LENGTH = 2048

_CODE = re.compile(r"[A-Za-z0-9_-]+")


def short_code(url: str) -> str:
    """The code of ``url``: MD5 → int → low 32 bits → 4 bytes big-endian → URL-safe Base64, unpadded."""
    low32 = int.from_bytes(hashlib.md5(url.encode()).digest(), "big") & 0xFFFF_FFFF
    return base64.urlsafe_b64encode(low32.to_bytes(4, "big")).rstrip(b"=").decode()


def check_code(code: str) -> str | None:
    """Why ``code`` cannot be a code (a sentence), or None if it can."""
    if not code:
        return "the code is empty"
    if len(code) > MAX_CODE_LENGTH:
        return f"the code is longer than {MAX_CODE_LENGTH} characters"
    if not _CODE.fullmatch(code):
        return "the code may only hold letters, digits, '-' and '_'"
    return None


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be shortened (a sentence), or None if it can."""
    if len(url) > MAX_URL_LENGTH:
        return f"the url is longer than {MAX_URL_LENGTH} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "the url holds spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return f"{url!r} is not a valid url"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an absolute http(s) url"
    return None
