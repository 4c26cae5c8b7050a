"""Run folders that are written atomically: a reader sees the old run, the new run, or nothing.

A run (``report.json`` + ``patch.safetensors``, or the demo's files) is first written into a hidden
temporary folder beside its destination, then moved into place with one rename. An existing
non-empty destination is refused unless ``overwrite=True`` (CLI ``--overwrite``), which replaces
the whole previous run, and only when that folder is a slugkit run (so a typo cannot wipe a folder
of other files).

    check_out_dir("runs/zorp")                # before any work: ValueError with one sentence if unusable
    with atomic_run_dir("runs/zorp") as tmp:  # write into tmp; renamed to runs/zorp on success
        (tmp / "report.json").write_text("{}")
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

MARKER = ".slugkit-run"  # written into every run folder; marks it as safe to replace with overwrite=True
RUN_FILES = ("report.json", "patch.safetensors", MARKER)
STALE_SECONDS = 3600  # leftovers of interrupted runs older than this are removed


class OutputDirError(ValueError):
    """The output folder cannot take this run (a file, not writable, or a previous run without overwrite)."""


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a folder written by slugkit: the marker, a ``report.json``, or (an older
    ``slugkit demo``) ``unlearn/report.json``."""
    return path.is_dir() and any((path / f).is_file() for f in (MARKER, "report.json", "unlearn/report.json"))


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path.cwd()


def check_out_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output folder before any work; returns it as an absolute :class:`Path`.

    Raises :class:`OutputDirError` (a ValueError) with one sentence when ``path`` is an existing file,
    lies under a file, cannot be written, or already holds files (unless ``overwrite`` and it is a
    previous slugkit run).
    """
    out = Path(path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output folder {str(path)!r} is an existing file; expected a folder (new or empty)")
    base = _nearest_existing(out.parent)
    if not base.is_dir():
        raise OutputDirError(f"cannot create output folder {str(path)!r}: {str(base)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            names = sorted(os.listdir(out), key=lambda n: (n.startswith("."), n))  # visible names first
            raise OutputDirError(
                f"output folder {str(path)!r} already holds files (e.g. {names[0]!r}); choose a new "
                "folder or pass --overwrite (overwrite=True) to replace the whole previous run")
        if not is_run_dir(out):
            raise OutputDirError(
                f"output folder {str(path)!r} holds files that are not a slugkit run; --overwrite replaces only "
                "previous slugkit runs, so choose another folder")
    try:  # the one reliable test of writability: create (and remove) a folder where the run will be staged
        probe = tempfile.mkdtemp(dir=base, prefix=".slugkit-probe-")
        os.rmdir(probe)
    except OSError as err:
        raise OutputDirError(
            f"cannot write output folder {str(path)!r}: {str(base)!r} is not writable ({err.strerror or err})") from err
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_stale(folder: Path, pattern: str, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove leftovers in ``folder`` whose name matches regex ``pattern`` (group ``pid``: the writer's
    process id) when that process is gone or the leftover is older than ``max_age`` seconds."""
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    regex = re.compile(pattern)
    for entry in folder.iterdir():
        m = regex.match(entry.name)
        if m is None:
            continue
        pid = int(m.group("pid"))
        try:
            dead = pid != os.getpid() and not _pid_alive(pid)
            if dead or now - entry.lstat().st_mtime > max_age:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
        except OSError:
            continue  # another process removed or holds it; not ours to fight over
    return removed


@contextlib.contextmanager
def atomic_run_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "run") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on normal exit it becomes ``path`` in one rename.

    On any exception (``KeyboardInterrupt`` included) the temporary folder is removed and ``path``
    is left exactly as it was. With ``overwrite`` a previous run at ``path`` is replaced whole.
    """
    out = check_out_dir(path, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.tmp-"
    sweep_stale(out.parent, rf"^\.{re.escape(out.name)}\.(tmp|old)-(?P<pid>\d+)-")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"what": what, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``out``: one rename, or two (old aside, new in) when replacing a previous run."""
    try:
        os.replace(tmp, out)  # out absent or an empty folder: atomic
        return
    except OSError:
        if not (out.is_dir() and any(out.iterdir())):
            raise
    check_out_dir(out, overwrite)  # someone wrote into out meanwhile: same rules as at the start
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
    os.replace(out, old / "run")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "run", out)  # put the previous run back
        raise
    finally:
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
