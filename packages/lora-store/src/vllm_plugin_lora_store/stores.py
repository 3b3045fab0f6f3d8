"""Where adapters come from: a local directory or an S3 bucket.

A store lists the files of ``<store>/<name>/`` (top level only: an adapter
folder is flat) and copies chosen files into a destination folder. Both
methods block: the resolver calls them in a worker thread of its own pool.

A fetch copies at most the listed size of each file (a file that grew is
refused while streaming), checks the total ``deadline`` between reads, and
pins each file to the version listed (S3: ``If-Match`` on the listed ETag, so
the config and the weights cannot come from different uploads).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any

from vllm_plugin_lora_store.validate import AdapterRefused, check_file_name

__all__ = ["AdapterChanged", "FetchDeadline", "LocalStore", "RemoteFile", "S3Store", "Store", "open_store"]

_CHUNK = 1 << 20


class FetchDeadline(TimeoutError):
    """The fetch ran past its total deadline."""


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise FetchDeadline("the fetch ran past its deadline")


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name inside the adapter folder
    size: int
    source: str  # local real path or S3 key
    version: str = ""  # S3 ETag, or a local file's mtime_ns: what the fetch is pinned to


class Store:
    """Interface: ``list_files(name)`` (None: no such adapter) and ``fetch``."""

    uri: str

    def list_files(self, name: str) -> list[RemoteFile] | None:  # pragma: no cover
        raise NotImplementedError

    def fetch(
        self, name: str, files: list[RemoteFile], dest: str, deadline: float | None = None
    ) -> None:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    """``/path`` or ``file:///path``. Symlinks are followed only when their
    target stays inside the store's real path."""

    def __init__(self, root: str) -> None:
        self.uri = root
        self.root = os.path.realpath(os.path.expanduser(root))

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def list_files(self, name: str) -> list[RemoteFile] | None:
        folder = os.path.join(self.root, name)
        real = os.path.realpath(folder)
        if not self._inside(real) or real == self.root:
            if os.path.lexists(folder):
                raise AdapterRefused(name, "symlink-escape", f"its folder resolves to {real}, outside the store")
            return None
        if not os.path.isdir(real):
            return None
        files = []
        with os.scandir(real) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue  # .gitattributes, .complete, editor files: never fetched
                path = os.path.join(real, entry.name)
                target = os.path.realpath(path)
                if not self._inside(target):
                    raise AdapterRefused(
                        name, "symlink-escape", f"file {entry.name!r} resolves to {target}, outside the store"
                    )
                st = os.stat(target)
                if stat.S_ISDIR(st.st_mode):
                    continue  # adapters are flat; sub-folders (checkpoints, etc.) are ignored
                if not stat.S_ISREG(st.st_mode):
                    raise AdapterRefused(name, "bad-file", f"{entry.name!r} is not a regular file")
                check_file_name(name, entry.name)
                files.append(RemoteFile(entry.name, st.st_size, target, str(st.st_mtime_ns)))
        return files

    def fetch(self, name: str, files: list[RemoteFile], dest: str, deadline: float | None = None) -> None:
        for f in files:
            _check_deadline(deadline)
            if not self._inside(os.path.realpath(f.source)):  # changed since listing
                raise AdapterRefused(name, "symlink-escape", f"file {f.name!r} now resolves outside the store")
            out = os.path.join(dest, f.name)
            _copy_limited(name, f, f.source, out)


def _copy_limited(adapter: str, f: RemoteFile, src: str, out: str) -> None:
    """Copy at most the listed size; a file that grew since listing is refused."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(src, flags)
    with os.fdopen(fd, "rb") as fsrc, open(out, "xb") as fdst:
        try:
            _copy_n(fsrc, fdst, f.size)
        except _TooBig:
            raise AdapterRefused(adapter, "size", f"file {f.name!r} grew while being fetched") from None


class _TooBig(Exception):
    pass


def _copy_n(fsrc: Any, fdst: Any, n: int) -> None:
    if hasattr(os, "sendfile"):
        try:
            sent = 0
            while sent < n:
                k = os.sendfile(fdst.fileno(), fsrc.fileno(), sent, n - sent)
                if k == 0:
                    break
                sent += k
            fsrc.seek(sent)
            if fsrc.read(1):
                raise _TooBig
            return
        except OSError:
            fsrc.seek(0)
            fdst.seek(0)
            fdst.truncate()
    left = n
    while left > 0:
        buf = fsrc.read(min(_CHUNK, left))
        if not buf:
            break
        fdst.write(buf)
        left -= len(buf)
    if fsrc.read(1):
        raise _TooBig


class S3Store(Store):
    """``s3://bucket/prefix``: adapter ``name`` is every object under
    ``prefix/name/``. Endpoint, region and credentials come from boto3's
    normal chain (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, profiles, ...).
    The client is created on first use (boto3 is imported lazily)."""

    def __init__(self, uri: str, client: Any = None, *, read_timeout: float = 20.0, pool: int = 4) -> None:
        self.uri = uri
        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.read_timeout = read_timeout
        self.pool = pool
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    config = Config(
                        connect_timeout=self.read_timeout,
                        read_timeout=self.read_timeout,  # the socket timeout of every read
                        max_pool_connections=max(10, 2 * self.pool),
                    )
                    self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _key_prefix(self, name: str) -> str:
        return f"{self.prefix}/{name}/" if self.prefix else f"{name}/"

    def list_files(self, name: str) -> list[RemoteFile] | None:
        prefix = self._key_prefix(name)
        files = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or "/" in rel or rel.startswith("."):
                    continue  # the folder marker, a sub-folder or a hidden file: ignored
                check_file_name(name, rel)
                files.append(RemoteFile(rel, int(obj["Size"]), obj["Key"], str(obj.get("ETag", ""))))
        return files or None

    def fetch(self, name: str, files: list[RemoteFile], dest: str, deadline: float | None = None) -> None:
        for f in files:
            _check_deadline(deadline)
            kw = {"IfMatch": f.version} if f.version else {}
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=f.source, **kw)
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    raise AdapterChanged(f"file {f.name!r} changed since it was listed") from None
                raise
            body = resp["Body"]
            try:
                with open(os.path.join(dest, f.name), "xb") as out:
                    _stream(name, f, body, out, deadline)
            finally:
                body.close()


class AdapterChanged(Exception):
    """An object changed between the listing and its download (a new upload)."""


def _stream(adapter: str, f: RemoteFile, body: Any, out: Any, deadline: float | None) -> None:
    """Copy ``body`` into ``out``: at most ``f.size`` bytes, checking the deadline
    after every read. ``read1`` returns what one socket read brings, so a
    server dripping bytes cannot hold a read past the deadline."""
    raw = getattr(body, "_raw_stream", body)
    read = getattr(raw, "read1", None) or body.read
    got = 0
    while True:
        buf = read(min(_CHUNK, f.size - got + 1))
        if not buf:
            break
        got += len(buf)
        if got > f.size:
            raise AdapterRefused(adapter, "size", f"file {f.name!r} is larger than the {f.size} bytes listed")
        out.write(buf)
        _check_deadline(deadline)
    if got != f.size:
        raise AdapterRefused(
            adapter, "size", f"file {f.name!r} is {got} bytes, but was listed as {f.size} (changed during fetch?)"
        )


def open_store(uri: str, *, read_timeout: float = 20.0, pool: int = 4) -> Store:
    if uri.startswith("s3://"):
        return S3Store(uri, read_timeout=read_timeout, pool=pool)
    if uri.startswith("file://"):
        return LocalStore(uri[len("file://"):])
    return LocalStore(uri)
