"""Taking a file as it is now, so that it is uploaded as it was when it was logged.

Three ways, each measured in docs/artifacts.md:

- a reflink (`FICLONE`): a copy-on-write clone that shares the blocks until either side is
  written; constant time, and it survives deletion, replacement by rename and rewrites in
  place. Only where the filesystem supports it (Btrfs, XFS with reflink, bcachefs, ZFS 2.2+
  block cloning); elsewhere the ioctl fails at once and we copy.
- a copy: survives everything, costs a full read and write of the file (in the kernel,
  `copy_file_range`) on the caller's thread.
- a hard link (`snapshot="link"`): constant time, survives deletion and replacement by rename
  (a new inode takes the name; ours keeps the old one), but not a rewrite in place (the same
  inode changes under us). For writers that only ever delete or rename: Transformers'
  `checkpoint-N/` directories, Lightning's checkpoints when the system temp directory is on
  the checkpoint's filesystem (fsspec writes a temp file and renames it). Falls back to a
  copy where a link cannot be made (another filesystem, a filesystem without hard links).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Literal

try:
    import fcntl
except ImportError:  # Windows: no reflink through fcntl; copies
    fcntl = None  # type: ignore[assignment]

SnapshotMode = Literal["copy", "link"]
MODES: tuple[SnapshotMode, ...] = ("copy", "link")
FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_COPY_CHUNK = 1 << 30
# A link that cannot be made here (not "the source is gone"): copy instead.
_NO_LINK = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EACCES}
)


def take(source: str | os.PathLike[str], target: Path, mode: SnapshotMode) -> str:
    """Snapshot the regular file `source` (symlinks followed) at `target`, which must not
    exist. Returns how: "reflink", "copy" or "link"."""
    real = os.path.realpath(source)
    if mode == "link":
        try:
            os.link(real, target)
            return "link"
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
    return clone_or_copy(real, target)


def clone_or_copy(source: str, target: Path) -> str:
    """A reflink where the filesystem makes one, else a copy in the kernel."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        if fcntl is not None:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                return "reflink"
            except OSError:
                pass  # EOPNOTSUPP, EXDEV, EINVAL, ENOTTY...: this filesystem cannot
        _copy(src.fileno(), dst.fileno())
        return "copy"


def _copy(src: int, dst: int) -> None:
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        try:
            while copy_range(src, dst, _COPY_CHUNK):
                pass
            return
        except OSError as exc:  # e.g. EXDEV before Linux 5.3, or a filesystem without it
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            os.lseek(src, 0, os.SEEK_SET)
            os.ftruncate(dst, 0)
            os.lseek(dst, 0, os.SEEK_SET)
    with open(src, "rb", closefd=False) as reader, open(dst, "wb", closefd=False) as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
