"""The content-addressed disk cache of generated modules."""

from __future__ import annotations

import os
import stat

import pytest

from unroll.lowering import cache


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_loaded", {})
    return tmp_path


def test_generated_once_then_served_from_disk(cache_dir):
    calls = []

    def generate():
        calls.append(1)
        return "VALUE = 41 + 1\n"

    digest = cache.key("a", 1)
    assert cache.load("m", digest, generate).VALUE == 42
    cache._loaded.clear()  # a new process: the file is there, nothing is generated
    assert cache.load("m", digest, generate).VALUE == 42
    assert len(calls) == 1
    (path,) = cache_dir.glob("m_*.py")
    assert cache.intact(path.read_text())


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t[: len(t) // 2],  # half-written
        lambda t: t.replace("41", "40"),  # edited: the seal no longer matches
        lambda t: "VALUE = (\n",  # not Python at all
        lambda t: "",
    ],
)
def test_damaged_entry_is_regenerated_not_trusted(cache_dir, damage):
    digest = cache.key("b")
    cache.load("m", digest, lambda: "VALUE = 41 + 1\n")
    (path,) = cache_dir.glob("m_*.py")
    path.write_text(damage(path.read_text()))
    cache._loaded.clear()
    assert cache.load("m", digest, lambda: "VALUE = 41 + 1\n").VALUE == 42
    assert cache.intact(path.read_text())


def test_keys_separate_their_parts():
    assert cache.key("ab", "c") != cache.key("a", "bc")
    assert cache.key(1, 2) == cache.key("1", "2")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    cache.write_atomic(tmp_path / "x.py", "A = 1\n")
    cache.write_atomic(tmp_path / "x.py", "A = 2\n")
    assert sorted(os.listdir(tmp_path)) == ["x.py"]
    assert (tmp_path / "x.py").read_text() == "A = 2\n"


def test_kernel_module_is_served_from_disk_after_a_restart(cache_dir, monkeypatch):
    """With the in-process memo cleared (as in a new process), the module comes from its file
    and is not generated again."""
    pytest.importorskip("triton")
    import unroll
    from unroll.lowering.triton import op

    calls = []
    real = op.module_source
    monkeypatch.setattr(op, "module_source", lambda block: calls.append(1) or real(block))
    first = op.kernel_module(unroll.schemes["heavy_ball"])
    cache._loaded.clear()
    second = op.kernel_module(unroll.schemes["heavy_ball"])
    assert len(calls) == 1 and first is not second and first.__file__ == second.__file__


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """As open() would create them (0666 less the umask), not mkstemp's private 0600."""
    old = os.umask(umask)
    try:
        path = cache.write_atomic(tmp_path / "x.py", "A = 1\n")
        cache.write_atomic(tmp_path / "x.py", "A = 2\n")  # replacing keeps to the rule
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
