"""A content-addressed cache of generated source on disk, and loading modules from real files.

Generated kernel modules are written once per key (sha256 over everything the text depends on:
the canonical scheme, the options, the unroll/template/torch/triton versions) to
``$UNROLL_CACHE_DIR`` (default ``~/.cache/unroll``), atomically (a temporary file in the same
directory, then ``os.replace``), and imported from that file: Triton reads a kernel's source back
with ``inspect``, which needs a real file. Each file ends with the sha256 of its own text; an
entry whose text does not match (half-written, truncated, edited) or does not import is
regenerated, never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from unroll import __version__
from unroll.errors import UnrollError

_FOOTER = "# unroll content sha256: "
_loaded: dict[str, ModuleType] = {}
_lock = threading.Lock()
_umask_lock = threading.Lock()


def cache_dir() -> Path:
    """``$UNROLL_CACHE_DIR``, else ``~/.cache/unroll`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("UNROLL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unroll"


def key(*parts: object) -> str:
    """sha256 hex digest of the parts, each by its ``str``, separated so they cannot run together."""
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


def versions() -> tuple[str, str, str]:
    """(unroll, torch, triton) versions: part of every key."""
    try:
        import triton

        tv = triton.__version__
    except ImportError:  # pragma: no cover - the pure-torch paths run without Triton
        tv = "none"
    return __version__, torch.__version__, tv


def _umask() -> int:
    """The process's umask (read by setting it, so under a lock of its own)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader sees the old file or the whole new one. The
    file gets the mode ``open`` would give a new one (0666 less the umask: 0644 usually), not
    the private 0600 of the temporary file it is written through."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def seal(text: str) -> str:
    """``text`` with a last line holding its own sha256 (checked by `intact`)."""
    return f"{text}{_FOOTER}{hashlib.sha256(text.encode()).hexdigest()}\n"


def intact(sealed: str) -> bool:
    """Whether ``sealed`` ends with the sha256 of what precedes it."""
    body, sep, tail = sealed.rpartition(_FOOTER)
    return bool(sep) and tail.strip() == hashlib.sha256(body.encode()).hexdigest()


def import_file(path: str | Path, name: str) -> ModuleType:
    """Import the Python file at ``path`` as module ``name`` (registered in ``sys.modules``, so
    ``inspect`` and pickling find it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UnrollError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load(stem: str, digest: str, generate: Callable[[], str]) -> ModuleType:
    """The module cached under ``digest`` (a `key`), generating and writing it when the entry is
    missing or damaged. ``stem`` names the file (``<stem>_<digest[:16]>.py``); ``generate``
    returns the source. Loaded once per process."""
    with _lock:
        if digest in _loaded:
            return _loaded[digest]
        path = cache_dir() / f"{stem}_{digest[:16]}.py"
        name = f"unroll_kernels.{stem}_{digest[:16]}"
        module = None
        try:
            text = path.read_text(encoding="utf-8")
            if intact(text):
                module = import_file(path, name)
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError, SyntaxError, ImportError):
            module = None  # damaged or unreadable: regenerate below
        if module is None:
            write_atomic(path, seal(generate()))
            module = import_file(path, name)
        _loaded[digest] = module
        return module
