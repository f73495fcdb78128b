"""Where a command may write: never over its own inputs, never over what it does not own, never
two at a time, and never half.

Every command that writes (train --out, export --out, retrieve --out, batch --out, plot --out)
checks its output path against every input path first. Paths are compared after resolving links
(`..`, symlinks) and, when both exist, by the file system's identity (hard links), so no spelling
of a path lets an output replace an input. The error names both paths and what to do instead.

One rule for outputs that exist: a finished output is replaced only with --force (check_existing);
a training run's folder is resumed, not replaced. A second writer of the same output is refused
while the first holds it (OutputLock: an advisory lock the operating system releases when the
holder dies, so a killed run's lock never needs clearing). A write that fails (a full disk) removes
its temporary file and names the path and the free space (write_failed).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locking (documented in docs/reliability.md)
    fcntl = None


class OutputError(ValueError):
    """An output path that would destroy data; the message says which and what to do."""


def same(a: str | Path, b: str | Path) -> bool:
    """Whether a and b name one file or folder (through links, `..` and hard links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def within(inner: str | Path, outer: str | Path) -> bool:
    """Whether inner is outer or lies somewhere below it (links resolved)."""
    inner, outer = Path(inner).resolve(), Path(outer).resolve()
    return inner == outer or outer in inner.parents


def check_output(out: str | Path, inputs: dict[str, str | Path], flag: str = "--out") -> None:
    """Refuse an output that is, contains or lies inside an input. inputs: {what: path}, e.g.
    {"--users": "u.jsonl", "--bundle": "bundles/b"}."""
    for what, path in inputs.items():
        if path is None:
            continue
        if same(out, path) or within(path, out) or (Path(path).is_dir() and within(out, path)):
            raise OutputError(f"{flag} {out} would overwrite the input {what} {path}; "
                              f"write the output somewhere else")


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder tmp onto out. An existing out is set aside first and deleted only
    once tmp is in place; if the rename fails, it is put back. Readers see the old or the new."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_existing(out: str | Path, force: bool, flag: str = "--out") -> None:
    """A file output that exists is replaced only with --force."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{flag} {out}: exists; pass --force to replace it, or choose another {flag}")


def free_space(path: str | Path) -> str:
    """'3.2 MiB free on /work' for the file system that holds path (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 2**20:,.1f} MiB free on {p}"
    except OSError:
        return "free space unknown"


def write_failed(path: str | Path, err: OSError, tmp: str | Path | None = None) -> OSError:
    """The OSError to raise when writing path failed: the temporary file removed, the path and
    (for a full disk) the free space named, and what was kept."""
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(err.errno, f"no space left writing {path} ({free_space(path)}); nothing was replaced: "
                                  "free some space and run the same command again")
    return OSError(err.errno, f"cannot write {path}: {err.strerror or err}; nothing was replaced")


class OutputLock:
    """Holds `out` for one writer: a second `mindref` command writing the same output is refused,
    naming the first (its command, process, host and start). The lock is a file beside out
    (.NAME.lock) locked with flock: released by the operating system when the holder exits or is
    killed, so a stale lock is recovered by the next run on its own."""

    def __init__(self, out: str | Path, command: str):
        self.out, self.command = Path(out), command
        self.path = self.out.parent / f".{self.out.name}.lock"
        self.fd = None

    def __enter__(self) -> OutputLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the file may be removed by its last holder between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another mindref command"
                os.close(fd)
                raise OutputError(f"--out {self.out}: in use by {holder}; wait for it to finish, or choose "
                                  "another --out") from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                self.fd = fd
                note = (f"mindref {self.command} (pid {os.getpid()} on {socket.gethostname()}, since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')})")
                os.ftruncate(fd, 0)
                os.pwrite(fd, note.encode(), 0)
                return self
            os.close(fd)
        raise OutputError(f"--out {self.out}: could not take its lock {self.path}")

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before the unlock: a waiter re-checks the inode
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
