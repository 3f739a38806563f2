"""Object store behaviour, the same suite over LocalStore (a temp dir) and S3Store (moto's S3
server on loopback, through the unmodified minio client), plus outage, retry and error tests."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from prometheus_client import REGISTRY

from parrot.errors import ConfigError, InvalidArgument, Unavailable
from parrot.storage import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    StorageUnavailable,
    open_store,
)
from tests.helpers.s3server import Moto

ACCESS_KEY = "parrot-test-access"
SECRET_KEY = "parrot-test-secret-do-not-log"
BUCKET = "parrot-test"


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = Moto()
    server.start()
    yield server
    if server.running:
        server.stop()


@pytest.fixture
def s3_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Moto:
    if not moto.running:
        moto.start()
    monkeypatch.setenv("PARROT_S3_ENDPOINT", moto.endpoint)
    monkeypatch.setenv("PARROT_S3_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("PARROT_S3_SECRET_KEY", SECRET_KEY)
    for name in ("PARROT_S3_REGION", "PARROT_S3_SECURE", "PARROT_S3_CREATE_BUCKET", "PARROT_S3_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return moto


class Retries:
    """Records on_retry calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []

    def __call__(self, op: str, key: str, attempt: int, error: str) -> None:
        self.calls.append((op, key, attempt, error))


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "local":
        st = open_store(str(tmp_path / "store"), retry_for_s=10)
    else:
        request.getfixturevalue("s3_env")
        st = open_store(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:8]}/data", retry_for_s=10)
    yield st
    await st.close()


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".parrot-tmp")]


def _ops(backend: str, op: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "parrot_storage_operations_total", {"backend": backend, "op": op, "outcome": outcome}
    )
    return value or 0.0


# ---- the shared behaviour ---------------------------------------------------------------


async def test_put_get_exists_delete(store: ObjectStore) -> None:
    before = _ops(store.backend, "put", "ok")
    assert not await store.exists("runs/r1/record.bin")
    await store.put("runs/r1/record.bin", b"\x00\x01payload")
    assert await store.exists("runs/r1/record.bin")
    assert not await store.exists("runs/r1")  # a 'folder' is not an object
    assert await store.get("runs/r1/record.bin") == b"\x00\x01payload"
    await store.put("runs/r1/record.bin", b"second")
    assert await store.get("runs/r1/record.bin") == b"second"
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    await store.delete("runs/r1/record.bin")
    assert not await store.exists("runs/r1/record.bin")
    await store.delete("runs/r1/record.bin")  # deleting again is fine (retries are safe)
    assert _ops(store.backend, "put", "ok") == before + 3


async def test_json_round_trip(store: ObjectStore) -> None:
    obj = {"id": "r1", "turns": [1, 2, 3], "text": "naïve “quotes” 中文", "nested": {"ok": True, "none": None}}
    await store.put_json("runs/r1/run.json", obj)
    assert await store.get_json("runs/r1/run.json") == obj
    await store.put("bad.json", b"{not json")
    with pytest.raises(StorageError, match="bad.json"):
        await store.get_json("bad.json")


async def test_list_returns_only_the_prefix_sorted(store: ObjectStore) -> None:
    keys = ["runs/r1/b.json", "runs/r1/a.json", "runs/r1/sub/c.json", "runs/r10/x.json", "runs/r2/c.json", "top.json"]
    for k in keys:
        await store.put(k, k.encode())
    assert await store.list("runs/r1/") == ["runs/r1/a.json", "runs/r1/b.json", "runs/r1/sub/c.json"]
    assert await store.list("runs/r1") == ["runs/r1/a.json", "runs/r1/b.json", "runs/r1/sub/c.json", "runs/r10/x.json"]
    assert await store.list("runs/r1/sub/") == ["runs/r1/sub/c.json"]
    assert await store.list("") == sorted(keys)
    assert await store.list() == sorted(keys)
    assert await store.list("nothing/here/") == []
    assert await store.list("t") == ["top.json"]


async def test_list_folders_is_one_level(store: ObjectStore) -> None:
    for k in ["runs/r1/run.json", "runs/r1/units/0.json", "runs/r10/run.json", "runs/r2/units/1.json", "top.json"]:
        await store.put(k, b"x")
    assert await store.list_folders("runs/") == ["r1", "r10", "r2"]
    assert await store.list_folders("runs/r1/") == ["units"]
    assert await store.list_folders("") == ["runs"]
    assert await store.list_folders("nothing/") == []
    with pytest.raises(InvalidArgument):
        await store.list_folders("runs")


async def test_missing_object(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as err:
        await store.get("no/such/key.json")
    assert err.value.key == "no/such/key.json"
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "no/such/key.json" in str(err.value)
    with pytest.raises(ObjectNotFound):
        await store.get_json("no/such/key.json")
    assert not await store.exists("no/such/key.json")
    await store.delete("no/such/key.json")


BAD_KEYS = ["", "/abs/key", "a/../b", "..", "./a", "a/./b", "a//b", "a/", "a\\b", "a/b\x00", "a/x.parrot-tmp", "x" * 1100]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_rejected(store: ObjectStore, key: str) -> None:
    for call in (store.put(key, b"x"), store.get(key), store.exists(key), store.delete(key)):
        with pytest.raises(InvalidArgument) as err:
            await call
        assert err.value.field == "key"


@pytest.mark.parametrize("prefix", ["/abs", "../x", "a/../", "a//", "a\\b"])
async def test_bad_prefixes_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.list(prefix)
    assert err.value.field == "prefix"


async def test_overwrite_is_atomic(store: ObjectStore) -> None:
    """Readers racing a writer always see one whole version, never a mix or a partial file."""
    versions = [bytes([65 + i]) * (256 * 1024) for i in range(3)]
    await store.put("race/obj", versions[0])
    done = asyncio.Event()
    seen: set[bytes] = set()

    async def writer() -> None:
        for i in range(24):
            await store.put("race/obj", versions[i % 3])
        done.set()

    async def reader() -> None:
        while not done.is_set():
            data = await store.get("race/obj")
            assert data in versions, f"torn read: {len(data)} bytes"
            seen.add(data[:1])

    await asyncio.gather(writer(), reader(), reader())
    assert await store.get("race/obj") == versions[23 % 3]
    if isinstance(store, LocalStore):
        assert _tmp_files(store.root) == []
        assert await store.list("race/") == ["race/obj"]


async def test_url(store: ObjectStore) -> None:
    await store.put("a/b.txt", b"x")
    url = store.url("a/b.txt")
    if isinstance(store, LocalStore):
        assert url == (store.root / "a" / "b.txt").as_uri()
        assert url.startswith("file:///")
    else:
        assert url.startswith(f"s3://{BUCKET}/t-") and url.endswith("/data/a/b.txt")


# ---- opening stores and configuration ----------------------------------------------------


async def test_local_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "made" / "here"
    st = open_store(root.as_uri())
    assert isinstance(st, LocalStore) and st.root == root and root.is_dir()
    await st.put("k", b"v")
    assert (root / "k").read_bytes() == b"v"
    monkeypatch.chdir(tmp_path)
    rel = open_store("relative/dir")
    assert isinstance(rel, LocalStore) and rel.root == tmp_path / "relative" / "dir"
    assert await rel.list() == []


@pytest.mark.parametrize(
    "url", ["", "gs://bucket/x", "file://otherhost/data", "s3://Bad_Bucket/x", "s3://ab/x", "s3://bucket/a/../b"]
)
def test_bad_store_urls(url: str, s3_env: Moto) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


def test_s3_url_with_credentials_is_refused_without_echo(s3_env: Moto) -> None:
    with pytest.raises(ConfigError) as err:
        open_store(f"s3://user:{SECRET_KEY}@bucket/x")
    assert SECRET_KEY not in str(err.value)


@pytest.mark.parametrize("var", ["PARROT_S3_ENDPOINT", "PARROT_S3_ACCESS_KEY", "PARROT_S3_SECRET_KEY"])
def test_missing_env_var_names_it(var: str, s3_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(var)
    with pytest.raises(ConfigError, match=var) as err:
        open_store(f"s3://{BUCKET}/x")
    assert SECRET_KEY not in str(err.value) and ACCESS_KEY not in str(err.value)


def test_s3_endpoint_parsing() -> None:
    from parrot.storage.s3 import S3Settings

    base = {"PARROT_S3_ACCESS_KEY": ACCESS_KEY, "PARROT_S3_SECRET_KEY": SECRET_KEY}
    s = S3Settings.from_env({**base, "PARROT_S3_ENDPOINT": "http://127.0.0.1:9000"})
    assert (s.endpoint, s.secure) == ("127.0.0.1:9000", False)
    s = S3Settings.from_env({**base, "PARROT_S3_ENDPOINT": "https://minio.example:9000/"})
    assert (s.endpoint, s.secure) == ("minio.example:9000", True)
    s = S3Settings.from_env({**base, "PARROT_S3_ENDPOINT": "minio:9000", "PARROT_S3_SECURE": "0"})
    assert (s.endpoint, s.secure) == ("minio:9000", False)
    s = S3Settings.from_env({**base, "PARROT_S3_ENDPOINT": "minio:9000", "PARROT_S3_REGION": "eu-west-1"})
    assert (s.secure, s.region, s.create_bucket) == (True, "eu-west-1", True)
    assert SECRET_KEY not in repr(s) and ACCESS_KEY not in repr(s)
    for bad in ({"PARROT_S3_ENDPOINT": "ftp://x:1"}, {"PARROT_S3_ENDPOINT": "http://x:1/path"},
                {"PARROT_S3_ENDPOINT": "x:1", "PARROT_S3_SECURE": "maybe"},
                {"PARROT_S3_ENDPOINT": "x:1", "PARROT_S3_CREATE_BUCKET": "perhaps"}):
        with pytest.raises(ConfigError, match="PARROT_S3_"):
            S3Settings.from_env({**base, **bad})


async def test_s3_bucket_not_created_when_disabled(s3_env: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARROT_S3_CREATE_BUCKET", "0")
    st = open_store("s3://parrot-missing-bucket/x", retry_for_s=5)
    with pytest.raises(StorageError, match="NoSuchBucket") as err:
        await st.put("k.json", b"{}")
    assert "k.json" in str(err.value)
    monkeypatch.setenv("PARROT_S3_CREATE_BUCKET", "1")
    st = open_store("s3://parrot-created-bucket/x", retry_for_s=5)
    await st.put("k.json", b"{}")
    assert await st.get("k.json") == b"{}"


def test_s3_error_classification() -> None:
    """5xx, throttling and timeouts are transient; access denied and 4xx are not."""
    from minio.error import S3Error, ServerError
    from urllib3.exceptions import NewConnectionError, ProtocolError, ReadTimeoutError

    from parrot.storage.s3 import S3Settings, S3Store

    env = {"PARROT_S3_ENDPOINT": "127.0.0.1:1", "PARROT_S3_ACCESS_KEY": "a", "PARROT_S3_SECRET_KEY": "b"}
    st = S3Store(S3Settings.from_env(env).client(), "bucket")

    class Resp:
        def __init__(self, status: int) -> None:
            self.status = status

    def s3err(code: str, status: int) -> S3Error:
        return S3Error(Resp(status), code, "msg", "/bucket/k", "req", "host")  # type: ignore[arg-type]

    assert st._is_transient(s3err("SlowDown", 503))
    assert st._is_transient(s3err("InternalError", 500))
    assert st._is_transient(s3err("RequestTimeout", 400))
    assert st._is_transient(ServerError("bad gateway", 502))
    assert st._is_transient(NewConnectionError(None, "refused"))  # type: ignore[arg-type]
    assert st._is_transient(ProtocolError("reset"))
    assert st._is_transient(ReadTimeoutError(None, "/", "timed out"))  # type: ignore[arg-type]
    assert not st._is_transient(s3err("AccessDenied", 403))
    assert not st._is_transient(s3err("NoSuchBucket", 404))
    assert not st._is_transient(ServerError("teapot", 418))
    assert "ACCESS_KEY" in st._describe(s3err("AccessDenied", 403))


# ---- outages and retries -----------------------------------------------------------------


async def test_s3_outage_put_is_retried_until_the_server_returns(
    s3_env: Moto, caplog: pytest.LogCaptureFixture
) -> None:
    retries = Retries()
    st = open_store(f"s3://{BUCKET}/outage-{uuid.uuid4().hex[:8]}", retry_for_s=20, on_retry=retries)
    await st.put("warm", b"up")  # bucket exists; the outage hits a put in flight
    before = REGISTRY.get_sample_value("parrot_storage_retries_total", {"backend": "s3", "op": "put"}) or 0.0
    s3_env.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="parrot.storage"):
            task = asyncio.create_task(st.put("runs/r1/conv/000001.json", b'{"turns": 8}'))
            await asyncio.sleep(1.5)
            assert not task.done()
            s3_env.start()
            await asyncio.wait_for(task, 15)
    finally:
        if not s3_env.running:
            s3_env.start()
    assert retries.calls and retries.calls[0][:3] == ("put", "runs/r1/conv/000001.json", 1)
    assert await st.get("runs/r1/conv/000001.json") == b'{"turns": 8}'
    after = REGISTRY.get_sample_value("parrot_storage_retries_total", {"backend": "s3", "op": "put"}) or 0.0
    assert after - before == len(retries.calls)
    assert "retrying" in caplog.text
    assert SECRET_KEY not in caplog.text and ACCESS_KEY not in caplog.text
    await st.close()


async def test_s3_gives_up_after_retry_for_s(s3_env: Moto) -> None:
    retries = Retries()
    st = open_store(f"s3://{BUCKET}/down", retry_for_s=1, on_retry=retries)
    s3_env.stop()
    try:
        start = time.monotonic()
        with pytest.raises(StorageUnavailable) as err:
            await st.put("k.json", b"{}")
        elapsed = time.monotonic() - start
    finally:
        s3_env.start()
    assert 0.9 <= elapsed < 3.0
    assert isinstance(err.value, Unavailable) and err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "k.json" in str(err.value) and SECRET_KEY not in str(err.value)
    assert len(retries.calls) >= 2
    await st.close()


async def test_async_on_retry_callback_and_local_transient_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, int, str]] = []

    async def on_retry(op: str, key: str, attempt: int, error: str) -> None:
        calls.append((op, key, attempt, error))

    st = open_store(str(tmp_path), retry_for_s=10, on_retry=on_retry)
    real_replace = os.replace
    failures = iter([errno.EAGAIN, errno.EINTR])

    def flaky_replace(src: Any, dst: Any) -> None:
        code = next(failures, None)
        if code is not None:
            raise OSError(code, os.strerror(code), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr("parrot.storage.local.os.replace", flaky_replace)
    await st.put("a/b.json", b"{}")
    monkeypatch.undo()
    assert [c[:3] for c in calls] == [("put", "a/b.json", 1), ("put", "a/b.json", 2)]
    assert await st.get("a/b.json") == b"{}"
    assert _tmp_files(tmp_path) == []


async def test_local_disk_full_is_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    retries = Retries()
    st = open_store(str(tmp_path), retry_for_s=10, on_retry=retries)

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("parrot.storage.local.os.replace", full)
    with pytest.raises(StorageError) as err:
        await st.put("runs/r1/out.json", b"{}")
    monkeypatch.undo()
    assert "runs/r1/out.json" in str(err.value) and "No space left" in str(err.value)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert retries.calls == [] and _tmp_files(tmp_path) == []


async def test_local_key_path_blocked_by_a_directory(tmp_path: Path) -> None:
    """Works as root too: os.replace onto a non-empty directory fails with IsADirectoryError."""
    retries = Retries()
    st = open_store(str(tmp_path), retry_for_s=10, on_retry=retries)
    await st.put("runs/r1/conv.json", b"{}")
    start = time.monotonic()
    with pytest.raises(StorageError) as err:
        await st.put("runs/r1", b"x")
    assert time.monotonic() - start < 1.0 and retries.calls == []
    assert "'runs/r1'" in str(err.value)
    assert _tmp_files(tmp_path) == []
    assert await st.list() == ["runs/r1/conv.json"]


def _modes_enforced(folder: Path) -> bool:
    """False for root (or CAP_DAC_OVERRIDE), which writes into a read-only folder anyway."""
    try:
        (folder / "probe").touch()
    except PermissionError:
        return True
    (folder / "probe").unlink()
    return False


async def test_local_permission_denied(tmp_path: Path) -> None:
    retries = Retries()
    st = open_store(str(tmp_path / "store"), retry_for_s=10, on_retry=retries)
    ro = tmp_path / "store" / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not _modes_enforced(ro):
            pytest.skip("running as root: file modes are not enforced (see the simulated test below)")
        with pytest.raises(StorageError) as err:
            await st.put("ro/x.json", b"{}")
    finally:
        ro.chmod(0o700)
    assert "ro/x.json" in str(err.value) and "Permission denied" in str(err.value)
    assert retries.calls == []


async def test_local_permission_denied_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as above through a patched os.replace, so it also runs as root."""
    retries = Retries()
    st = open_store(str(tmp_path), retry_for_s=10, on_retry=retries)

    def denied(src: Any, dst: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))

    monkeypatch.setattr("parrot.storage.local.os.replace", denied)
    with pytest.raises(StorageError) as err:
        await st.put("ro/x.json", b"{}")
    monkeypatch.undo()
    assert "ro/x.json" in str(err.value) and "Permission denied" in str(err.value)
    assert retries.calls == [] and _tmp_files(tmp_path) == []
