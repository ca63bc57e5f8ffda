"""Writing files so that a crash leaves whole files and whole lines, never half of one.

atomic_write_text   a file written to a temporary name, synced, renamed into place
append_line         one line appended in one write and synced (review verdicts, teacher answers)
repair_tail         on the next start: an incomplete last line (a crash mid-append) is cut off
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make renames and new names in ``folder`` durable (POSIX; Windows cannot open a directory)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def append_line(path: Path, text: str) -> None:
    """Append ``text`` and a newline as one write, then sync it. A crash can at worst leave this line
    incomplete at the end of the file, which ``repair_tail`` cuts off on the next start."""
    path = Path(path)
    created = not path.exists()
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
    view = memoryview((text + "\n").encode("utf-8"))
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while view:  # a regular file takes it in one write; loop in case it does not
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if created:  # the new file's name must survive a power cut too
        fsync_dir(path.parent)


def repair_tail(path: Path) -> tuple[int, bytes] | None:
    """Make a JSONL file end with a newline. A last line that is complete JSON (saved by an editor
    without the final newline) gets its newline; an incomplete one is cut off and returned as
    (line number, its bytes) so the caller can warn about it."""
    data = Path(path).read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    try:
        json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        with open(path, "r+b") as handle:
            handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())
        return data[:start].count(b"\n") + 1, tail
    append_line(path, "")  # complete: only the newline was missing
    return None
