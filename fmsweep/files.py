"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fmsweep.errors import UserError


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`.

    The temporary file's name is this write's own, so that writers of one file at once (two commands rewriting a
    sweep's record) never rename or remove each other's. A failed write (disk full, read-only folder) is a
    UserError that leaves the previous `path` intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None
    finally:
        tmp.unlink(missing_ok=True)
