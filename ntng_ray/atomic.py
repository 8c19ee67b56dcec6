"""Files written whole or not at all: caches, tables and run outputs that other processes read."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it into place.

    Readers never see a partial file, concurrent workers building the same cache entry each
    write whole files (the last wins), and the file is readable by other users of a shared
    cluster folder (mkstemp's own mode is 0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def hidden_sibling(target: Path, suffix: str) -> Path:
    """A unique hidden name beside ``target``, for a folder on its way in or out."""
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.{suffix}"


def replace_folder(staging: Path, target: Path) -> None:
    """Put the finished folder ``staging`` at ``target``, replacing an old one only once the new
    one is whole, so readers see the old folder or the new one, never a mix."""
    if not target.exists():
        staging.rename(target)
        return
    old = hidden_sibling(target, "old")
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old)
