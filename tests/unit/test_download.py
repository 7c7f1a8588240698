"""Downloads (resume, checksum, errors) against a loopback HTTP server, and archive extraction safety."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anomaly_attn.data.download import (
    ChecksumMismatchError,
    UnsafeArchiveError,
    download_and_extract,
    download_file,
    safe_extract,
)
from anomaly_attn.data.errors import MissingDataError

SERVER_LIFETIME_S = 60.0  # the server shuts itself down after this, even if a test hangs


@dataclass
class LoopbackServer:
    """An HTTP server on 127.0.0.1 serving in-memory files, optionally honouring ``Range``."""

    files: dict[str, bytes]
    support_range: bool = True
    bytes_served: int = 0
    range_headers: list[str | None] = field(default_factory=list)
    port: int = 0

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def serve() -> Iterator:
    """Start loopback servers on demand; each stops at teardown or after ``SERVER_LIFETIME_S``."""
    running: list[tuple[http.server.ThreadingHTTPServer, threading.Timer]] = []

    def start(files: dict[str, bytes], support_range: bool = True) -> LoopbackServer:
        state = LoopbackServer(files=files, support_range=support_range)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                body = state.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                range_header = self.headers.get("Range")
                state.range_headers.append(range_header)
                start_byte = 0
                if state.support_range and range_header:
                    start_byte = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start_byte >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start_byte}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start_byte:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                # Counted before writing: the client may have read every byte (and the test asserted
                # the count) before this thread runs again after the write.
                state.bytes_served += len(payload)
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        state.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        timer = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
        timer.daemon = True
        timer.start()
        running.append((server, timer))
        return state

    yield start
    for server, timer in running:
        timer.cancel()
        server.shutdown()
        server.server_close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_bytes(entries: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _payload(size: int = 300_000) -> bytes:
    return bytes((index * 7 + index // 251) % 256 for index in range(size))


def test_download_and_extract_tar(serve, tmp_path: Path) -> None:
    archive = _tar_bytes({"cat/train/good/000.png": b"img0", "cat/readme.txt": b"hello"})
    server = serve({"data.tar.gz": archive})
    dest = tmp_path / "dataset"

    result = download_and_extract(server.url("data.tar.gz"), dest, _sha256(archive), progress=False)

    assert result == dest
    assert (dest / "cat/train/good/000.png").read_bytes() == b"img0"
    assert (dest / "cat/readme.txt").read_bytes() == b"hello"
    assert not (dest / "data.tar.gz").exists()
    assert not list(dest.glob("*.part"))
    served_once = server.bytes_served
    assert served_once == len(archive)
    # The marker makes a second call a no-op: nothing is requested again.
    download_and_extract(server.url("data.tar.gz"), dest, _sha256(archive), progress=False)
    assert server.bytes_served == served_once


def test_download_and_extract_zip(serve, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("top/a.txt", b"A")
    server = serve({"set.zip": buffer.getvalue()})
    download_and_extract(server.url("set.zip"), tmp_path, None, progress=False)
    assert (tmp_path / "top/a.txt").read_bytes() == b"A"


def test_wrong_sha256_is_refused_and_nothing_trusted(serve, tmp_path: Path) -> None:
    payload = _payload(5000)
    server = serve({"file.bin": payload})
    wrong = "0" * 64
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumMismatchError) as caught:
        download_file(server.url("file.bin"), dest, sha256=wrong, progress=False)
    message = str(caught.value)
    assert wrong in message and _sha256(payload) in message and "file.bin" in message
    assert not dest.exists()
    assert not dest.with_suffix(".bin.part").exists()


def test_resume_requests_only_the_missing_bytes(serve, tmp_path: Path) -> None:
    payload = _payload()
    half = len(payload) // 2
    server = serve({"big.bin": payload})
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(payload[:half])

    download_file(server.url("big.bin"), dest, sha256=_sha256(payload), progress=False, chunk_size=4096)

    assert server.range_headers == [f"bytes={half}-"]
    assert server.bytes_served == len(payload) - half
    assert dest.read_bytes() == payload
    assert not (tmp_path / "big.bin.part").exists()


def test_server_without_range_support_restarts_cleanly(serve, tmp_path: Path) -> None:
    payload = _payload()
    server = serve({"big.bin": payload}, support_range=False)
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(payload[:1000])

    download_file(server.url("big.bin"), dest, sha256=_sha256(payload), progress=False)

    assert server.bytes_served == len(payload)
    assert dest.read_bytes() == payload


def test_partial_file_longer_than_remote_restarts(serve, tmp_path: Path) -> None:
    payload = _payload(2000)
    server = serve({"f.bin": payload})
    (tmp_path / "f.bin.part").write_bytes(payload + b"garbage")
    download_file(server.url("f.bin"), tmp_path / "f.bin", sha256=_sha256(payload), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == payload


def test_existing_verified_file_is_not_downloaded_again(serve, tmp_path: Path) -> None:
    payload = b"placed by hand"
    server = serve({"f.bin": payload})
    (tmp_path / "f.bin").write_bytes(payload)
    download_file(server.url("f.bin"), tmp_path / "f.bin", sha256=_sha256(payload), progress=False)
    assert server.bytes_served == 0


def test_unreachable_url_raises_missing_data_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # bind then close: the port is free and nothing listens on it
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed_port}/data.tar.xz"
    dest = tmp_path / "data.tar.xz"
    with pytest.raises(MissingDataError) as caught:
        download_file(url, dest, progress=False)
    assert url in str(caught.value) and str(dest) in str(caught.value) and "by hand" in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)


def test_http_404_raises_missing_data_error(serve, tmp_path: Path) -> None:
    server = serve({})
    with pytest.raises(MissingDataError, match="404"):
        download_file(server.url("nothing.zip"), tmp_path / "nothing.zip", progress=False)


def _evil_tar(kind: str, path: Path) -> None:
    with tarfile.open(path, "w") as archive:
        good = tarfile.TarInfo("ok/first.txt")
        good.size = 2
        archive.addfile(good, io.BytesIO(b"ok"))
        if kind == "dotdot":
            info = tarfile.TarInfo("../evil")
            info.size = 4
            archive.addfile(info, io.BytesIO(b"evil"))
        elif kind == "absolute":
            info = tarfile.TarInfo(str(path.parent / "absolute_evil"))
            info.size = 4
            archive.addfile(info, io.BytesIO(b"evil"))
        elif kind == "symlink":
            info = tarfile.TarInfo("etc_link")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc"
            archive.addfile(info)
        elif kind == "relative_symlink":
            info = tarfile.TarInfo("ok/up")
            info.type = tarfile.SYMTYPE
            info.linkname = "../../outside"
            archive.addfile(info)
        elif kind == "hardlink":
            info = tarfile.TarInfo("passwd")
            info.type = tarfile.LNKTYPE
            info.linkname = "/etc/passwd"
            archive.addfile(info)
        elif kind == "write_through_link":
            link = tarfile.TarInfo("here")
            link.type = tarfile.SYMTYPE
            link.linkname = "."
            archive.addfile(link)
            info = tarfile.TarInfo("here/inner.txt")
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))


def _evil_zip(kind: str, path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ok/first.txt", b"ok")
        if kind == "dotdot":
            archive.writestr("../evil", b"evil")
        elif kind == "absolute":
            archive.writestr(str(path.parent / "absolute_evil"), b"evil")
        elif kind == "symlink":
            info = zipfile.ZipInfo("etc_link")
            info.create_system = 3
            info.external_attr = (0o120777) << 16
            archive.writestr(info, "/etc")


@pytest.mark.parametrize(
    ("maker", "suffix", "kind", "culprit"),
    [
        (_evil_tar, ".tar", "dotdot", "../evil"),
        (_evil_tar, ".tar", "absolute", "absolute_evil"),
        (_evil_tar, ".tar", "symlink", "etc_link"),
        (_evil_tar, ".tar", "relative_symlink", "ok/up"),
        (_evil_tar, ".tar", "hardlink", "passwd"),
        (_evil_tar, ".tar", "write_through_link", "here/inner.txt"),
        (_evil_zip, ".zip", "dotdot", "../evil"),
        (_evil_zip, ".zip", "absolute", "absolute_evil"),
        (_evil_zip, ".zip", "symlink", "etc_link"),
    ],
)
def test_unsafe_archives_are_refused_without_writing(maker, suffix, kind, culprit, tmp_path: Path) -> None:
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    archive = archive_dir / f"evil{suffix}"
    maker(kind, archive)
    dest = tmp_path / "work" / "dest"
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(UnsafeArchiveError, match=culprit.replace(".", r"\.")):
        safe_extract(archive, dest)

    assert list(dest.iterdir()) == []
    assert sorted(path for path in tmp_path.rglob("*") if path not in (dest, dest.parent)) == before


def test_safe_extract_keeps_internal_symlinks_and_returns_members(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        data = tarfile.TarInfo("v1/data.txt")
        data.size = 3
        tar.addfile(data, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("latest")
        link.type = tarfile.SYMTYPE
        link.linkname = "v1"
        tar.addfile(link)
    dest = tmp_path / "out"
    extracted = safe_extract(archive, dest)
    assert extracted == [dest / "v1/data.txt", dest / "latest"]
    assert (dest / "latest" / "data.txt").read_bytes() == b"abc"
    assert sorted(path.name for path in dest.iterdir()) == ["latest", "v1"]


def test_safe_extract_tar_xz_and_unknown_suffix(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.xz"
    archive.write_bytes(_tar_bytes({"x/y.txt": b"y"}, mode="w:xz"))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/x/y.txt").read_bytes() == b"y"
    with pytest.raises(ValueError, match=r"\.tar\.xz"):
        safe_extract(tmp_path / "a.rar", tmp_path / "out")


def test_refused_archive_is_kept_and_not_marked(serve, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    _evil_tar("dotdot", evil)
    server = serve({"evil.tar": evil.read_bytes()})
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil"):
        download_and_extract(server.url("evil.tar"), dest, None, progress=False)
    # The archive stays for inspection, unmarked; the lock files (common.locks) stay by design.
    names = sorted(path.name for path in dest.iterdir())
    assert names == [".evil.tar.extract.lock", ".evil.tar.lock", "evil.tar"]
    assert not (tmp_path / "evil").exists()
