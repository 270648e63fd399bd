"""Atomic file output and hashing helpers.

Every output the workflow writes goes through :func:`atomic_write` (temp file in the
same folder, fsync, then ``os.replace``), so a crash never leaves a half-written file
that looks finished. The file gets the permissions a plain ``open(path, "w")`` of a new
file would: ``0o666`` minus the process umask (e.g. ``0o664`` under umask 002, so a
research group's shared project folder stays readable by the group), never the ``0o600``
of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched. The
    temporary file is created with ``os.open(..., O_CREAT | O_EXCL, 0o666)``, so the kernel
    applies the umask (and a default ACL of the folder) exactly as for ``open()``; the rename
    keeps those permissions.

    Args:
        path: final destination; its parent folder is created if missing.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
    Raises:
        ValueError: if ``mode`` is not a write mode.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = _create_sibling(path)
    except OSError as err:
        raise (disk_full_error(path, err) if is_disk_full(err) else err) from None
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = None
        with contextlib.suppress(OSError):
            written = os.path.getsize(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = _disk_full_cause(err)
        if full is not None:  # torch.save turns it into a RuntimeError ("unexpected pos") whose context it is
            raise disk_full_error(path, full, written) from None  # one line, not the writer's (torch's) trace
        raise


class DiskFullError(OSError):
    """A write found its file system full: the message names the folder and its free space."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def is_disk_full(err: BaseException) -> bool:
    """``err`` says the file system (or the user's quota) is full: ``Errno 28`` ENOSPC or EDQUOT."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_cause(err: BaseException | None) -> OSError | None:
    """The ENOSPC / EDQUOT error that ``err`` is or was raised from (its cause or context chain)."""
    for _ in range(16):
        if err is None:
            return None
        if is_disk_full(err):
            return err
        err = err.__cause__ or err.__context__
    return None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def disk_full_error(path: str | os.PathLike, err: OSError, written: int | None = None) -> DiskFullError:
    """A :class:`DiskFullError` for a failed write of ``path``: ``[Errno 28] <folder>: no space left
    on device writing <name> (<written> written before it filled); <free> free of <total> there now``."""
    folder = Path(path).parent
    try:
        usage = shutil.disk_usage(folder)
        space = f"{_size(usage.free)} free of {_size(usage.total)} there now"
    except OSError:
        space = "free space unknown"
    what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
    partial = f" ({_size(written)} written before it filled; removed)" if written else ""
    return DiskFullError(err.errno, f"[Errno {err.errno}] {folder}: {what} writing {Path(path).name}{partial}; "
                                    f"{space}: free space or move the folder (results_dir / data_dir)")


def _create_sibling(path: Path) -> tuple[int, str]:
    """Create a new, empty, uniquely named ``.{name}.<random>.tmp`` next to ``path``.

    Returns ``(fd, tmp_path)``; mode ``0o666`` minus the umask (as ``open()`` does).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, allow_nan=True)
        handle.write("\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is not valid JSON.

    Raises:
        ValueError: the file is not valid JSON (message has file, line and column).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk_bytes`` chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
