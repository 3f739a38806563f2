"""A directory on the local file system as an object store (the embedded default).

Each key is a file under the root. A put writes a temporary file beside the target, fsyncs it,
renames it over the target (``os.replace``, atomic on POSIX) and fsyncs the directory, so a
reader or a crash never sees half an object. Content types are not stored.

Unlike S3, a key cannot be both an object and a 'folder' of other keys (``a`` and ``a/b``):
the second put fails with :class:`~parrot.storage.base.StorageError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from parrot.storage.base import TMP_SUFFIX, ObjectNotFound, ObjectStore, OnRetry

#: OSError codes worth retrying: interrupted or busy calls, flaky network file systems.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE, errno.EIO}
)


class LocalStore(ObjectStore):
    """Objects as files under ``root`` (created if missing)."""

    backend = "local"

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        retry_for_s: float = 60.0,
        on_retry: OnRetry | None = None,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 2.0,
    ):
        super().__init__(
            retry_for_s=retry_for_s, on_retry=on_retry, backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s
        )
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file that holds ``key`` (the key must already be valid)."""
        return self.root.joinpath(*key.split("/"))

    def url(self, key: str) -> str:
        return self.path(key).as_uri()

    def _put_sync(self, key: str, data: bytes, content_type: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name[:100]}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        # O_EXCL: never reuse a name; 0o666 & umask, like any newly created file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)

    def _get_sync(self, key: str) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def _exists_sync(self, key: str) -> bool:
        return self.path(key).is_file()

    def _list_sync(self, prefix: str) -> list[str]:
        # Walk only the deepest folder the prefix names completely; filter the rest by string.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(start, onerror=_raise):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            for name in filenames:
                if not name.endswith(TMP_SUFFIX):
                    keys.append(base + name)
        return keys

    def _list_folders_sync(self, prefix: str) -> list[str]:
        folder = self.root.joinpath(*prefix.rstrip("/").split("/")) if prefix else self.root
        if not folder.is_dir():
            return []
        return [entry.name for entry in os.scandir(folder) if entry.is_dir()]

    def _delete_sync(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except (IsADirectoryError, PermissionError):
            if path.is_dir():  # a 'folder' of other keys, not an object: nothing to delete
                return
            raise
        _fsync_dir(path.parent)

    def _remove_leftovers_sync(self, prefix: str) -> int:
        start = self.root.joinpath(*prefix.rstrip("/").split("/")) if prefix else self.root
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                if name.endswith(TMP_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, OSError) and exc.strerror:
            where = f" ({exc.filename})" if exc.filename else ""
            hint = _HINTS.get(exc.errno or 0, "")
            return f"{exc.strerror}{where}{hint}"
        return super()._describe(exc)


#: What to check, for the permanent errors an operator can fix.
_HINTS = {
    errno.ENOSPC: "; the disk is full: free space, then resume the run",
    errno.EDQUOT: "; the disk quota is used up: raise it, then resume the run",
    errno.EFBIG: "; the file is over the size limit (RLIMIT_FSIZE or the file system's): raise it, then resume the run",
    errno.EACCES: "; no permission to write there: fix the owner or mode of the store folder",
    errno.EPERM: "; no permission to write there: fix the owner or mode of the store folder",
    errno.EROFS: "; the file system is read-only",
    errno.EEXIST: "; a file stands where the store needs a folder: move it away",
    errno.ENOTDIR: "; a file stands where the store needs a folder: move it away",
}


def _fsync_dir(path: Path) -> None:
    """Makes a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # some file systems cannot fsync a folder
            raise
    finally:
        os.close(fd)


def _raise(err: OSError) -> None:
    if not isinstance(err, FileNotFoundError):  # a folder gone mid-walk simply has no keys
        raise err
