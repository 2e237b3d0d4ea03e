"""The distribution cookie: the shared secret nodes prove to each other.

Two nodes connect only if they hold the same cookie (see
:mod:`pybeam.distribution.handshake`; the cookie itself never crosses the wire). The
cookie comes from, in order:

1. the ``cookie`` argument (e.g. ``--cookie`` on the command line);
2. the ``PYBEAM_COOKIE`` environment variable, if set and not empty;
3. the file ``~/.pybeam.cookie`` (whitespace stripped). On first use the file is
   created with 20 random uppercase letters and mode 0600, as Erlang does with
   ``~/.erlang.cookie``. Like Erlang, a cookie file that group or others can
   access is refused: a secret everyone on the host can read is no secret.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import string
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["COOKIE_ENV", "COOKIE_FILE_NAME", "CookieError", "cookie_path", "resolve_cookie"]

COOKIE_ENV: Final = "PYBEAM_COOKIE"
COOKIE_FILE_NAME: Final = ".pybeam.cookie"
#: Length of a generated cookie: 20 letters of 26 is about 94 bits of entropy.
COOKIE_LENGTH: Final = 20


class CookieError(Exception):
    """The cookie cannot be used: an unsafe or empty cookie file, or an empty cookie."""


def cookie_path() -> Path:
    """Where the cookie file lives: ``~/.pybeam.cookie`` (``Path.home()`` honours ``$HOME``)."""
    return Path.home() / COOKIE_FILE_NAME


def resolve_cookie(cookie: str | None = None) -> str:
    """Return the cookie to use: ``cookie`` if given, else ``$PYBEAM_COOKIE``, else the cookie file.

    Raises :class:`CookieError` if the given cookie is empty, or if the cookie file
    is empty, not a regular file, or readable/writable by group or others.
    """
    if cookie is not None:
        if not cookie:
            raise CookieError("the cookie must not be empty")
        return cookie
    from_env = os.environ.get(COOKIE_ENV)
    if from_env:
        return from_env
    return _read_or_create(cookie_path())


def _generate() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(COOKIE_LENGTH))


def _read_or_create(path: Path) -> str:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    _create(path, _generate())
    # Read back rather than return what we generated: a node starting at the same
    # moment may have won the race, and then its cookie is the one on disk.
    return _read(path)


def _read(path: Path) -> str:
    # Open first, then fstat the open file, so the file we check is the file we read.
    try:
        f = path.open("r", encoding="utf-8")
    except IsADirectoryError:
        raise CookieError(f"cookie file {path} is not a regular file") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CookieError(f"cookie file {path} is not a regular file")
        # POSIX permission bits mean little on Windows, so only check them elsewhere.
        if os.name != "nt" and st.st_mode & 0o077:
            raise CookieError(
                f"cookie file {path} must be accessible by its owner only "
                f"(its mode is {stat.S_IMODE(st.st_mode):04o}); fix it with: chmod 600 {path}"
            )
        value = f.read().strip()
    if not value:
        raise CookieError(f"cookie file {path} is empty")
    return value


def _create(path: Path, value: str) -> None:
    """Create ``path`` holding ``value`` with mode 0600, atomically and without overwriting.

    The cookie is written to a private temporary file which is then hard-linked
    into place: the link either fails (someone else created the file first, and
    theirs wins) or publishes a complete file, so no reader ever sees it half
    written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pybeam.cookie.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:
            # No hard links on this filesystem: fall back to an exclusive create,
            # which never overwrites an existing cookie either.
            with contextlib.suppress(FileExistsError):
                excl = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(excl, "w", encoding="utf-8") as f:
                    f.write(value)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
