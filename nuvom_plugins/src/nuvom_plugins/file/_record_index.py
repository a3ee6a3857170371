"""Reading the result segments: the in-memory index of each id's latest line, kept
current by reading only the bytes appended since the last call (by any process), and the
reads of single lines by it (why and what it costs: :mod:`.results`, "Lookup cost" and
"Crash tolerance").

Why a module of its own: reading takes no lock and writes nothing, and every call of the
backend (a put's fence included) first catches up through it; the writing side (the lock
file, appends, rotation, purge and compaction) is :mod:`.results`. :class:`RecordIndex`
is a base class of :class:`~nuvom_plugins.file.results.FileResultBackend` and uses the
state its ``__init__`` sets (declared below).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from nuvom_kernel.backends import ResultBackend
from nuvom_kernel.errors import SerializationError
from nuvom_kernel.models import JobRecord

__all__ = ["RecordIndex"]

log = logging.getLogger("nuvom.file.results")

_PREFIX = b'{"_nv":1,'
_JSTR = rb'("(?:[^"\\]|\\.)*")'
_FAST = re.compile(rb'\{"_nv":1,"op":"put","id":' + _JSTR + rb',"st":' + _JSTR + rb',"fn":'
                   + _JSTR + rb',"ts":(-?[0-9][0-9.eE+-]*),"ru":(-?[0-9]+),"at":(-?[0-9]+),'
                   rb'"rec":\{')
_SEGMENT = re.compile(r"results-(\d{8})\.jsonl")
_CHUNK = 4 * 1024 * 1024


class _Loc(NamedTuple):
    """Where the latest line of one job lives, plus the fields ``query`` filters and
    orders on and the ones a put is fenced by."""

    job_id: str
    seg: int
    offset: int
    length: int  # without the newline
    updated_at: float
    status: str
    task: str
    run: int
    attempts: int



class RecordIndex(ResultBackend):
    """The reading side of :class:`~nuvom_plugins.file.results.FileResultBackend`."""

    # set by FileResultBackend.__init__
    path: Path
    _index: dict[str, _Loc]
    _tail_seg: int  # 0: not started
    _tail_pos: int
    _fds: dict[int, int]
    _problems: list[str]

    def _seg_path(self, seg: int) -> Path:
        return self.path / f"results-{seg:08d}.jsonl"

    def _segments(self) -> list[int]:
        return sorted(int(m.group(1)) for n in os.listdir(self.path)
                      if (m := _SEGMENT.fullmatch(n)))

    def _read_fd(self, seg: int) -> int | None:
        fd = self._fds.get(seg)
        if fd is None:
            try:
                fd = os.open(self._seg_path(seg), os.O_RDONLY)
            except FileNotFoundError:
                return None
            self._fds[seg] = fd
        return fd

    def _catch_up(self) -> None:
        """Index every line appended since the last call, across segment switches."""
        while True:
            if self._tail_seg == 0:
                segments = self._segments()
                if not segments:
                    return
                self._tail_seg, self._tail_pos = segments[0], 0
            seg = self._tail_seg
            fd = self._read_fd(seg)
            if fd is not None:
                self._consume(fd, seg, sealed=False)
                if not self._seg_path(seg + 1).exists():
                    return
            later = [s for s in self._segments() if s > seg]
            if not later:
                return
            if fd is not None:  # sealed: every write to it finished before the rotation
                self._consume(fd, seg, sealed=True)
            self._tail_seg, self._tail_pos = later[0], 0
            present = set(self._segments())
            for gone in [s for s in self._fds if s not in present]:
                os.close(self._fds.pop(gone))  # deleted by a purge: free its disk space

    def _consume(self, fd: int, seg: int, *, sealed: bool) -> None:
        """Index the complete lines of ``seg`` from the tail on, in ``_CHUNK`` reads.

        Linear in the bytes read, however long a line is: each chunk is split on its own
        (a byte is searched once, when it arrives) and the start of a line that runs past
        the chunk is kept as a list of chunks, joined once when its newline shows up.
        Growing one buffer and searching all of it per chunk instead costs quadratic time
        in the length of a large record (a 400 MB result took ~20 s to read past), paid by
        every process that opens the results, and by a writer holding the exclusive lock.
        An unterminated last line is left for a later call (a write may be in progress)
        unless ``sealed``, where it can only be torn: it is skipped and reported.
        """
        size = os.fstat(fd).st_size
        base = pos = self._tail_pos
        pending: list[bytes] = []  # the unterminated line so far, one entry per chunk
        pending_len = 0
        while pos < size:
            data = os.pread(fd, min(size - pos, _CHUNK), pos)
            if not data:
                break
            pos += len(data)
            lines = data.split(b"\n")
            rest = lines.pop()  # after the chunk's last newline (all of it if it has none)
            if lines:
                if pending:  # the first piece ends the line the earlier chunks began
                    pending.append(lines[0])
                    lines[0] = b"".join(pending)
                    pending, pending_len = [], 0
                offset = base
                for line in lines:
                    self._index_line(seg, offset, line)
                    offset += len(line) + 1
                base = offset
            if rest:
                pending.append(rest)
                pending_len += len(rest)
        if sealed and pending_len:
            self._problem(seg, base, f"torn last line ({pending_len} bytes) skipped")
            base += pending_len
        self._tail_pos = base

    def _index_line(self, seg: int, offset: int, line: bytes) -> None:
        if not line:
            return
        fast = _FAST.match(line)
        if fast and line.endswith(b"}}") and line.find(_PREFIX, 1) < 0:
            job_id, status, task = (_str(fast.group(i)) for i in (1, 2, 3))
            self._index[job_id] = _Loc(job_id, seg, offset, len(line), float(fast.group(4)),
                                       status, task, int(fast.group(5)),
                                       int(fast.group(6)))
            return
        obj = _decode(line)
        if obj is None:  # a torn prefix with a whole record glued after it?
            start = line.find(_PREFIX, 1)
            while start > 0 and (obj := _decode(line[start:])) is None:
                start = line.find(_PREFIX, start + 1)
            if obj is None:
                self._problem(seg, offset, f"undecodable line ({len(line)} bytes) skipped")
                return
            self._problem(seg, offset, f"torn line ({start} bytes) skipped before a record")
            offset, line = offset + start, line[start:]
        try:
            if obj.get("op") == "put":
                rec = obj["rec"]
                job_id = str(rec["job_id"])
                self._index[job_id] = _Loc(
                    job_id, seg, offset, len(line), float(rec.get("updated_at") or 0.0),
                    str(rec.get("status")), str(rec.get("task", rec.get("func_name"))),
                    int(rec.get("run", 1)), int(rec.get("attempts") or 0))
            elif obj.get("op") == "del":
                self._index.pop(str(obj["id"]), None)
        except (KeyError, TypeError, ValueError) as exc:
            self._problem(seg, offset, f"malformed record skipped ({exc!r})")

    def _problem(self, seg: int, offset: int, what: str) -> None:
        text = f"{self._seg_path(seg)}:{offset}: {what}"
        self._problems.append(text)
        log.warning("file results: %s; the other records are unaffected", text)

    def _read(self, loc: _Loc) -> dict[str, Any] | None:
        fd = self._read_fd(loc.seg)
        if fd is None:
            return None
        obj = _decode(os.pread(fd, loc.length, loc.offset))
        return obj["rec"] if obj is not None else None

    def _load(self, job_id: str, *, caught_up: bool = False) -> JobRecord | None:
        for attempt in range(2):
            if attempt or not caught_up:
                self._catch_up()
            loc = self._index.get(job_id)
            if loc is None:
                return None
            rec = self._read(loc)
            if rec is not None:
                try:
                    return JobRecord.from_dict(rec)
                except (TypeError, ValueError, KeyError) as exc:  # a hand-edited line
                    raise SerializationError(
                        f"job {job_id}: stored record is invalid ({exc})") from exc
            if attempt == 0:  # our view predates a compaction we could not follow: rebuild
                self._reset()
        return None

    def _reset(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._index.clear()
        self._tail_seg, self._tail_pos = 0, 0



def _decode(line: bytes) -> dict[str, Any] | None:
    if not line.startswith(_PREFIX):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _str(raw: bytes) -> str:
    """A JSON string literal's value; most ids need no unescaping."""
    return raw[1:-1].decode("utf-8") if b"\\" not in raw else str(json.loads(raw))

