"""Low-level helpers shared by the file backends: atomic writes, safe names, message files.

Everything here exists for one reason: a reader must never see half of anything. New files
are written under a dot-prefixed temporary name in the destination directory (listings skip
dot files), fsynced, then renamed into place, and a checksum in the header catches damage
that happens later (a bad disk, a hand edit).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nuvom_kernel.envelope import task_of_body
from nuvom_kernel.models import Message

__all__ = [
    "UNWRITABLE",
    "CorruptEntry",
    "create_missing",
    "decode_message",
    "encode_message",
    "encode_name",
    "fsync_dir",
    "hashed",
    "open_lock",
    "probe_writable",
    "read_header",
    "read_message",
    "read_queue_name",
    "write_new_file",
]

_MAGIC = b"NVQ1 "
_SAFE = re.compile(r"[A-Za-z0-9_-]*")
_MAX_NAME_PART = 96
TMP_PREFIX = ".tmp-"
#: ``errno`` values saying this process may not write where it tried (a read-only mount,
#: another user's folder): what a look at an existing store can live with.
UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class CorruptEntry(ValueError):
    """A queue file whose name or content cannot be decoded; it goes to quarantine."""


def encode_name(text: str) -> str:
    """A file-name-safe form of a job id or queue name that never contains ``.``.

    Plain ids (uuid hex, slugs) pass through unchanged so a directory listing stays readable;
    anything else is %-escaped per UTF-8 byte; very long values become a hash (``~`` prefix,
    which escaping never produces) to respect the 255-byte name limit.
    """
    if _SAFE.fullmatch(text):
        encoded = text
    else:
        encoded = "".join(
            ch if _SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
            for ch in text
        )
    if len(encoded) > _MAX_NAME_PART:
        return "~" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]
    return encoded


def decode_name(encoded: str) -> str:
    """Inverse of :func:`encode_name` (a hashed value comes back as its hash)."""
    if "%" not in encoded:
        return encoded
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%" and i + 3 <= len(encoded):
            try:
                raw += bytes.fromhex(encoded[i + 1:i + 3])
            except ValueError:
                raw += b"%"
                i += 1
                continue
            i += 3
        else:
            raw += encoded[i].encode("utf-8")
            i += 1
    return raw.decode("utf-8", errors="replace")


def hashed(encoded: str) -> bool:
    """Whether :func:`encode_name` replaced the value by its hash: only the file's header
    then holds the value (see :func:`read_queue_name`)."""
    return encoded.startswith("~")


#: Most bytes :func:`read_header` reads looking for the end of a header.
_MAX_HEADER = 1 << 20


def read_header(path: Path) -> dict[str, Any] | None:
    """The JSON header line of message file ``path``, never its body (so a large body costs
    nothing); ``None`` if the file is gone or does not start with a header (damaged: the
    claim that reaches it quarantines it)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(_MAX_HEADER)
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not line.startswith(_MAGIC) or not line.endswith(b"\n"):
        return None
    try:
        header = json.loads(line[len(_MAGIC):])
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def read_queue_name(path: Path, encoded: str) -> str | None:
    """The queue name in the header of message file ``path``, if it encodes to ``encoded``
    (the name part its file name holds); ``None`` if the file is gone or its header does not
    say so (damaged, renamed by hand: the claim that reaches it quarantines it).

    Why: a long queue name is a hash in file names (:func:`encode_name`), so whatever
    reports queue names reads it here."""
    queue = (read_header(path) or {}).get("queue")
    return queue if type(queue) is str and encode_name(queue) == encoded else None


def encode_message(message: Message) -> bytes:
    """Header line (JSON, with body length and CRC-32) followed by the raw body bytes.

    ``failures`` is not in the header: it changes on every retry, so it lives in the file
    name (see :mod:`nuvom_plugins.file._names`) and a retry stays one rename.
    """
    header = {
        "id": message.id,
        "task": message.task,
        "queue": message.queue,
        "priority": message.priority,
        "available_at": message.available_at,
        "created_at": message.created_at,
        "len": len(message.body),
        "crc": zlib.crc32(message.body),
    }
    return _MAGIC + json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + \
        message.body


def read_message(path: Path) -> Message:
    """:func:`decode_message` of the file at ``path``. Something else in its place (a
    directory made by hand) is a :class:`CorruptEntry` to quarantine: its
    ``IsADirectoryError`` escaped every claim that reached it, which left it leased, then
    recovered and claimed again for good, and it stopped `nuvom list jobs`."""
    try:
        data = path.read_bytes()
    except IsADirectoryError as exc:
        raise CorruptEntry("a directory, not a message file") from exc
    return decode_message(data)


def decode_message(data: bytes) -> Message:
    """Parse :func:`encode_message` output (``failures`` is 0: the caller takes it from the
    file name); raise :class:`CorruptEntry` saying what is wrong. A header written before
    ``task`` existed (a pre-SPI 1 producer's file) gets the task its body names: concurrency
    limits and per-task counts key on it, and ``""`` let those jobs run past their limit.
    Only such old files pay for reading the body; a body that is not an envelope gives
    ``""``."""
    if not data.startswith(_MAGIC):
        raise CorruptEntry("not a Nuvom queue file (bad magic)" if data else "empty file")
    end = data.find(b"\n")
    if end < 0:
        raise CorruptEntry("header line is not terminated")
    try:
        header: dict[str, Any] = json.loads(data[len(_MAGIC):end])
        body = data[end + 1:]
        if len(body) != header["len"]:
            raise CorruptEntry(f"body is {len(body)} bytes, header says {header['len']}")
        if zlib.crc32(body) != header["crc"]:
            raise CorruptEntry("body checksum mismatch")
        return Message(
            id=str(header["id"]),
            body=bytes(body),
            queue=str(header["queue"]),
            priority=int(header["priority"]),
            available_at=float(header["available_at"]),
            created_at=float(header["created_at"]),
            task=str(header["task"]) if "task" in header else task_of_body(body),
        )
    except CorruptEntry:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"undecodable header: {exc}") from None


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_new_file(directory: Path, data: bytes, *, fsync: bool) -> Path:
    """Write ``data`` to a fresh hidden temp file in ``directory`` and return its path.

    The caller renames it into place; until then every listing ignores it, so a writer
    killed half-way leaves only an invisible temp file (swept later by age).
    """
    tmp = directory / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def fsync_dir(directory: Path) -> None:
    """Make renames into ``directory`` durable (the entry lives in the directory's inode)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_missing(path: Path) -> None:
    """Create the empty file ``path`` unless something is there already.

    Why not ``Path.touch``: that writes the mtime of a file that exists, which needs write
    access, so opening a store on a read-only mount (or another user's) failed for a file it
    did not have to change. ``O_EXCL`` reports a file that exists as ``EEXIST`` even on a
    read-only file system (checked before ``EROFS``), so only a missing file needs a write.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        pass


def open_lock(path: Path) -> int:
    """A descriptor to ``flock`` on the lock file ``path``, created if missing.

    Read-write when this process may write it; else, if the file exists, read-only:
    ``flock(2)`` needs no write access, and a process that may only read the store (a
    read-only mount, ``nuvom status`` run by another user) must still be able to open it to
    look. Whatever writes then fails where it writes, naming the file.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            raise exc from None  # missing too: creating it is what failed


def probe_writable(directories: Iterable[Path]) -> None:
    """Create and delete an empty temp file in each of ``directories``.

    Why try instead of asking (``access(2)``, ``statvfs``): the attempt fails exactly as the
    real writes would, with the system's own reason; a temp file is invisible to every
    listing, and one left by a kill is swept.

    :raises OSError: for the first directory that cannot be written, naming the directory
        (not the temp file, a name the user never saw).
    """
    for directory in directories:
        try:
            write_new_file(directory, b"", fsync=False).unlink()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, os.fspath(directory)) from exc
