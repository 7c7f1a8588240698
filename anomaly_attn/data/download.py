"""Resumable, checksummed downloads and archive extraction that cannot write outside its target.

Datasets are large and the network is unreliable, so a download streams into ``NAME.part``, resumes
that file with an HTTP ``Range`` request after an interruption, and only becomes ``NAME`` (atomically)
once it is complete and its checksum matches. Archives come from third parties, so ``safe_extract``
checks every member before writing anything and extracts into a staging folder that is thrown away on
any failure.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from anomaly_attn.common.locks import exclusive
from anomaly_attn.data.errors import MissingDataError

NETWORK_TIMEOUT_S = 60.0
"""Seconds a connect or a single read may stall before the download counts as failed."""

ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar", ".zip")

_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder (or is a device/fifo)."""


class ChecksumMismatchError(ValueError):
    """A downloaded file's hash differs from the expected one; the file has been deleted."""


def file_hash(path: Path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of ``path`` computed in chunks (datasets do not fit in memory as one bytes object)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_or_delete(path: Path, expected: dict[str, str], url: str) -> None:
    """Raise ``ChecksumMismatchError`` (after deleting ``path``) unless every expected hash matches."""
    for algorithm, expected_hex in expected.items():
        actual_hex = file_hash(path, algorithm)
        if actual_hex.lower() != expected_hex.lower():
            path.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"{algorithm} mismatch for {path.name} downloaded from {url}: "
                f"expected {expected_hex.lower()}, got {actual_hex}. The file was deleted; if the source "
                f"changed, update the checksum in the dataset config, otherwise retry the download."
            )


def _manual_download_error(url: str, dest: Path, reason: object) -> MissingDataError:
    return MissingDataError(
        f"Could not download {url} ({reason}). Download it by hand and save it as {dest} "
        f"(a partial {dest.name}.part there is resumed on the next try)."
    )


def _open(url: str, offset: int):
    """Open ``url``; asks for the bytes from ``offset`` on when ``offset`` > 0."""
    headers = {"User-Agent": "anomaly_attn-downloader"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=NETWORK_TIMEOUT_S)


def _content_range_start(header: str | None) -> int | None:
    """First byte position of a ``Content-Range: bytes START-END/TOTAL`` header, None when unparsable."""
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[len("bytes ") :].split("-", 1)[0])
    except ValueError:
        return None


# Why not torchvision.datasets.utils.download_url / extract_archive: no resume of a partial download
# (MVTec AD is 4.9 GB), md5 only (VisA and MVTec AD 2 publish sha256), and extraction does not refuse
# members that escape the destination or pass through links (safe_extract below does).
def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    md5: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Streams into ``dest.part`` and resumes an existing partial file with a ``Range`` request; a server that
    ignores ``Range`` (answers 200) makes it start over. The finished file is verified against ``sha256``
    (and ``md5``, for sources that only publish that) before it is renamed to ``dest``; on a mismatch it is
    deleted and ``ChecksumMismatchError`` names both hashes. An existing ``dest`` that verifies (or any
    existing ``dest`` when no hash is given) is returned untouched, so a file placed by hand is used as is.
    Network failures raise ``MissingDataError`` saying where to put the file when downloading by hand.
    """
    dest = Path(dest)
    # Parallel jobs of a sweep download the same file: one at a time, the others then find it verified.
    with exclusive(dest.with_name(f".{dest.name}.lock"), f"downloading {url}"):
        return _download_file(url, dest, sha256, md5, progress, chunk_size)


def _download_file(url: str, dest: Path, sha256: str | None, md5: str | None, progress: bool,
                   chunk_size: int) -> Path:
    expected = {name: value for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if dest.is_file():
        if all(file_hash(dest, name) == value.lower() for name, value in expected.items()):
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".part")
    offset = partial.stat().st_size if partial.is_file() else 0

    try:
        response, offset = _open_resuming(url, partial, offset)
        with response:
            total = _receive(response, url, dest, partial, offset, chunk_size, progress)
    except _NETWORK_ERRORS as error:
        raise _manual_download_error(url, dest, error) from error

    received = partial.stat().st_size
    if total is not None and received != total:
        raise _manual_download_error(url, dest, f"connection closed after {received} of {total} bytes")
    _verify_or_delete(partial, expected, url)
    os.replace(partial, dest)
    return dest


def _open_resuming(url: str, partial: Path, offset: int):
    """The response to a request for ``url`` from byte ``offset`` on, and that offset; on a 416 answer
    ``partial`` is deleted and the whole file asked for (offset 0)."""
    try:
        return _open(url, offset), offset
    except urllib.error.HTTPError as error:
        if error.code != 416 or offset == 0:  # 416: the partial file is not a prefix we can extend
            raise
        partial.unlink()
        return _open(url, 0), 0


def _receive(
    response, url: str, dest: Path, partial: Path, offset: int, chunk_size: int, progress: bool
) -> int | None:
    """Append the body of ``response`` to ``partial`` (which holds ``offset`` bytes already; rewritten
    when the server ignored the ``Range`` request) and return the file's expected size (None: unknown)."""
    if offset and response.status != 206:
        offset = 0  # Range ignored: the body is the whole file, start over
    range_start = _content_range_start(response.headers.get("Content-Range"))
    if offset and range_start != offset:
        partial.unlink()
        raise _manual_download_error(
            url, dest, f"asked for bytes from {offset}, got from {range_start}"
        )
    remaining = response.headers.get("Content-Length")
    total = offset + int(remaining) if remaining is not None else None
    with (
        open(partial, "ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=dest.name,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := response.read(chunk_size):
            out.write(chunk)
            bar.update(len(chunk))
    return total


def _member_relpath(name: str, archive: Path) -> PurePosixPath:
    """The member's path relative to the extraction folder; refuses absolute paths and ``..``."""
    posix_name = name.replace("\\", "/")
    path = PurePosixPath(posix_name)
    if path.is_absolute() or (len(posix_name) > 1 and posix_name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    return path


def _inside(relative: str) -> bool:
    """Whether a path relative to the extraction folder stays inside it after normalization."""
    normalized = os.path.normpath(relative)
    return normalized != ".." and not normalized.startswith("../") and not os.path.isabs(normalized)


def _check_link(name: str, target: str, relative_to: PurePosixPath, archive: Path, kind: str) -> None:
    """Refuse a link whose target is absolute or leaves the extraction folder."""
    if os.path.isabs(target) or not _inside(str(relative_to / target)):
        raise UnsafeArchiveError(
            f"{archive}: {kind} member {name!r} points to {target!r}, outside the extraction folder; "
            f"refusing to extract"
        )


def _check_not_through_link(path: PurePosixPath, links: set[PurePosixPath], name: str, archive: Path) -> None:
    """Refuse a member written below another member that is a link (writes would follow the link)."""
    for parent in path.parents:
        if parent in links:
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} lies below the link {str(parent)!r}; refusing to extract"
            )


def _zip_symlink_target(archive_file: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """Target of a zip member stored as a Unix symlink (zipfile itself would write it as a text file)."""
    if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
        return archive_file.read(info).decode("utf-8")
    return None


def _check_tar(archive_file: tarfile.TarFile, archive: Path) -> list[PurePosixPath]:
    members = archive_file.getmembers()
    paths = [_member_relpath(member.name, archive) for member in members]
    links = {path for member, path in zip(members, paths, strict=True) if member.issym() or member.islnk()}
    for member, path in zip(members, paths, strict=True):
        _check_not_through_link(path, links, member.name, archive)
        if member.issym():
            _check_link(member.name, member.linkname, path.parent, archive, "symlink")
        elif member.islnk():
            _check_link(member.name, member.linkname, PurePosixPath("."), archive, "hardlink")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} is a device or fifo; refusing to extract"
            )
    return paths


def _check_zip(archive_file: zipfile.ZipFile, archive: Path) -> tuple[list[PurePosixPath], dict[str, str]]:
    infos = archive_file.infolist()
    paths = [_member_relpath(info.filename, archive) for info in infos]
    symlinks = {}
    for info, path in zip(infos, paths, strict=True):
        target = _zip_symlink_target(archive_file, info)
        if target is not None:
            _check_link(info.filename, target, path.parent, archive, "symlink")
            symlinks[info.filename] = target
    link_paths = {PurePosixPath(name) for name in symlinks}
    for info, path in zip(infos, paths, strict=True):
        _check_not_through_link(path, link_paths, info.filename, archive)
    return paths, symlinks


def _extract_into(archive: Path, staging: Path) -> list[PurePosixPath]:
    """Check every member of ``archive``, then extract it into ``staging``; returns the member paths."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as archive_file:
            paths, symlinks = _check_zip(archive_file, archive)
            for info in archive_file.infolist():
                if info.filename in symlinks:
                    link = staging / info.filename
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(symlinks[info.filename], link)
                else:
                    archive_file.extract(info, staging)
        return paths
    if name.endswith((".tar.xz", ".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive, "r:*") as archive_file:
            paths = _check_tar(archive_file, archive)
            # Our own check above decides; the "data" filter (Python >= 3.10.12) is a second line of defence.
            if hasattr(tarfile, "data_filter"):
                archive_file.extractall(staging, filter="data")
            else:
                archive_file.extractall(staging)
        return paths
    raise ValueError(
        f"{archive}: unsupported archive type; supported suffixes are {', '.join(ARCHIVE_SUFFIXES)}"
    )


def _merge_into(source: Path, target: Path) -> None:
    """Move the contents of ``source`` into ``target``, merging folders that already exist there."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        destination = target / entry.name
        if (
            entry.is_dir()
            and not entry.is_symlink()
            and destination.is_dir()
            and not destination.is_symlink()
        ):
            _merge_into(entry, destination)
        else:
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            elif destination.is_symlink() or destination.exists():
                destination.unlink()
            os.replace(entry, destination)


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Extract ``archive`` (.tar.xz, .tar.gz, .tgz, .tar, .zip) into ``dest``; returns the member paths.

    Every member is checked before anything is written: absolute paths, ``..`` components, links whose
    target leaves ``dest``, members below a link, and devices/fifos raise ``UnsafeArchiveError`` naming the
    member. Extraction goes to a staging folder inside ``dest`` that is moved into place only when the
    whole archive succeeded, so a refused or broken archive leaves ``dest`` as it was.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=dest))
    try:
        relative_paths = _extract_into(archive, staging)
        _merge_into(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [dest / path for path in relative_paths]


def download_and_extract(
    url: str,
    dest_dir: Path,
    sha256: str | None,
    progress: bool = True,
    archive_name: str | None = None,
) -> Path:
    """Download the archive at ``url`` into ``dest_dir``, extract it there and return ``dest_dir``.

    The archive is deleted only after a successful extraction, and a marker file
    (``.ARCHIVE_NAME.extracted``) makes a second call a no-op. ``archive_name`` defaults to the last
    component of the URL path; pass it when the URL does not end in a file name with a known suffix.
    """
    dest_dir = Path(dest_dir)
    if archive_name is None:
        archive_name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not archive_name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(
            f"Cannot tell the archive type of {url!r} (name {archive_name!r}); "
            f"pass archive_name ending in one of {', '.join(ARCHIVE_SUFFIXES)}"
        )
    marker = dest_dir / f".{archive_name}.extracted"
    if marker.is_file():
        return dest_dir
    with exclusive(dest_dir / f".{archive_name}.extract.lock", f"downloading and extracting {url}"):
        if marker.is_file():  # a parallel job extracted it while this one waited
            return dest_dir
        archive = download_file(url, dest_dir / archive_name, sha256=sha256, progress=progress)
        extracted = safe_extract(archive, dest_dir)
        archive.unlink()
        marker.write_text(json.dumps({"url": url, "sha256": sha256, "members": len(extracted)}) + "\n")
    return dest_dir
