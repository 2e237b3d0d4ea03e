"""Tests for pybeam.distribution.cookie: where the cookie comes from, and the cookie file's safety."""

from __future__ import annotations

import os
import stat
import string
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pybeam.distribution.cookie import COOKIE_ENV, COOKIE_LENGTH, CookieError, cookie_path, resolve_cookie

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home directory and no cookie in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(COOKIE_ENV, raising=False)
    return tmp_path


def write_cookie(home: Path, text: str, mode: int = 0o600) -> Path:
    path = home / ".pybeam.cookie"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_cookie_path_is_in_home(home: Path) -> None:
    assert cookie_path() == home / ".pybeam.cookie"


def test_argument_wins_over_env_and_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COOKIE_ENV, "FROMENV")
    write_cookie(home, "FROMFILE")
    assert resolve_cookie("FROMARG") == "FROMARG"


def test_empty_argument_is_refused(home: Path) -> None:
    with pytest.raises(CookieError, match="empty"):
        resolve_cookie("")


def test_env_wins_over_file_and_creates_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COOKIE_ENV, "FROMENV")
    assert resolve_cookie() == "FROMENV"
    assert not (home / ".pybeam.cookie").exists()


def test_empty_env_falls_through_to_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(COOKIE_ENV, "")
    write_cookie(home, "FROMFILE")
    assert resolve_cookie() == "FROMFILE"


@posix_only
def test_file_is_created_on_first_use(home: Path) -> None:
    cookie = resolve_cookie()
    assert len(cookie) == COOKIE_LENGTH
    assert set(cookie) <= set(string.ascii_uppercase)
    path = home / ".pybeam.cookie"
    assert path.read_text() == cookie
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Later calls read the same cookie back, and no temporary files are left over.
    assert resolve_cookie() == cookie
    assert [p.name for p in home.iterdir()] == [".pybeam.cookie"]


def test_generated_cookies_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COOKIE_ENV, raising=False)
    cookies = set()
    for i in range(3):
        home = tmp_path / str(i)
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        cookies.add(resolve_cookie())
    assert len(cookies) == 3


def test_concurrent_first_use_agrees_on_one_cookie(home: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        cookies = set(pool.map(lambda _: resolve_cookie(), range(16)))
    assert len(cookies) == 1
    assert (home / ".pybeam.cookie").read_text() == cookies.pop()


def test_file_contents_are_stripped(home: Path) -> None:
    write_cookie(home, "  SECRETCOOKIE \n")
    assert resolve_cookie() == "SECRETCOOKIE"


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o007])
def test_file_accessible_by_others_is_refused(home: Path, mode: int) -> None:
    path = write_cookie(home, "SECRET", mode)
    with pytest.raises(CookieError, match="owner only") as info:
        resolve_cookie()
    assert str(path) in str(info.value)
    assert "chmod 600" in str(info.value)
    assert "SECRET" not in str(info.value)


@posix_only
def test_owner_read_only_file_is_fine(home: Path) -> None:
    write_cookie(home, "SECRET", 0o400)
    assert resolve_cookie() == "SECRET"


def test_empty_file_is_refused(home: Path) -> None:
    write_cookie(home, " \n")
    with pytest.raises(CookieError, match="empty"):
        resolve_cookie()


@posix_only
def test_directory_in_place_of_the_file_is_refused(home: Path) -> None:
    (home / ".pybeam.cookie").mkdir(mode=0o700)
    with pytest.raises(CookieError, match="not a regular file"):
        resolve_cookie()


def test_existing_file_is_never_overwritten(home: Path) -> None:
    path = write_cookie(home, "KEEPME")
    assert resolve_cookie() == "KEEPME"
    assert path.read_text() == "KEEPME"
    assert os.listdir(home) == [".pybeam.cookie"]
