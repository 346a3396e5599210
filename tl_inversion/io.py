"""Atomic writes: a file or folder is either the old one or the whole new one, never half.

Used for every artifact and checkpoint, so a run killed at any instant loses nothing
that was already saved. Also :func:`plain_number` and :func:`plain_bool`, which configs
use so that what they write as JSON reads back equal (and a string never passes for a bool).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from tl_inversion.errors import InputTypeError


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    """Remove a file or a folder tree at ``path`` if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the
    umask), not the owner-only ones of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def atomic_write_dir(path: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(tmp_folder)``, then move it into place at ``path``.

    An existing folder (or file) at ``path`` is replaced only after the new one is complete.
    The folder and what ``fill`` wrote get the permissions of a plain ``mkdir`` / ``open``
    (``0o777`` / ``0o666`` less the umask), whatever the writer used (``tempfile`` and
    safetensors' ``save_file`` create owner-only ones).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        mask = _umask()
        for p in (tmp, *tmp.rglob("*")):
            if not p.is_symlink():
                os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def plain_number(name: str, value: Any, kind: type) -> Any:
    """``value`` as a plain Python ``int`` or ``float`` (``kind``), e.g. for a config field.

    NumPy and torch scalars (0-dim) are unwrapped with ``.item()``, so a config holding them
    is written to JSON as a number and compares equal when a run is resumed.

    Args:
        name: the field's name, for the message.
        value: the given value.
        kind: ``int`` or ``float``.

    Raises:
        TypeError: a bool, a string or another non-number, or a fractional value for ``int``.
    """
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name} must be a number ({kind.__name__}), got {value!r} of type {type(value).__name__}")
    if kind is int:
        if value != int(value):
            raise InputTypeError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def plain_bool(name: str, value: Any) -> bool:
    """``value`` as a plain Python ``bool``, e.g. for a config field or a flag argument.

    NumPy and torch booleans (0-dim) are unwrapped; numbers, strings and ``None`` are refused
    (``bool("no")`` is True, so a string would silently mean the opposite).

    Args:
        name: the field's or argument's name, for the message.
        value: the given value.

    Raises:
        TypeError: anything but a Python, NumPy or 0-dim torch boolean.
    """
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0 and "bool" in str(getattr(value, "dtype", "")):
        value = value.item()
    if not isinstance(value, bool):
        raise InputTypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return value
