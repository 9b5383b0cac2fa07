"""Where the generated plan modules go when Numba's cache has no folder (runtime/codegen.py
``plan_dir``): a folder of this user's in the temporary directory, closed to others, never one
that another user owns or can write to (a module planted there would run when a session loads)."""

from __future__ import annotations

import os
import stat
import tempfile

import numba
import pytest

from runtime import codegen


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    """A fresh shared temporary directory, and no Numba cache folder."""
    monkeypatch.setattr(numba.config, "CACHE_DIR", None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _private(path: str) -> bool:
    st = os.stat(path)
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def test_plans_go_to_a_private_folder_of_the_user(tmp_root):
    d = codegen.plan_dir()
    assert d == str(tmp_root / f"bnnc-{os.getuid()}" / "plans")
    assert _private(os.path.dirname(d)) and os.access(d, os.W_OK)


def test_a_folder_others_can_write_to_is_not_used(tmp_root):
    shared = tmp_root / f"bnnc-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)  # as if made by someone else for everyone to write in
    d = codegen.plan_dir()
    assert not d.startswith(str(shared))
    assert _private(d)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777  # left as it was


def test_a_folder_of_another_user_is_not_used(tmp_root, monkeypatch):
    real = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real + 1)  # the folder's owner is now someone else
    shared = tmp_root / f"bnnc-{real + 1}"
    shared.mkdir(mode=0o700)
    d = codegen.plan_dir()
    assert not d.startswith(str(shared))


def test_the_numba_cache_folder_is_used_when_there_is_one(tmp_root, monkeypatch):
    cache = tmp_root / "cache"
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(cache))
    assert codegen.plan_dir() == str(cache / "plans")
