"""Downloading a named dataset into the cache and verifying it before it is kept."""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmoe import __version__
from fedmoe.data import sources
from fedmoe.data.catalogue import get_spec
from fedmoe.data.files import BUILT_IN, VERIFIED, BuiltinSource, FileSpec
from fedmoe.data.registry import cache_root, check_splits, generated, overall_checksum
from fedmoe.data.sources import data_error
from fedmoe.errors import DataError

DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds a download may wait for the server (connect or any single read)."""

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(file_name, bytes_done, bytes_total_or_None)`` while downloading."""


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_dataset` did.

    ``directory`` holds the dataset (``None`` for built-ins); ``downloaded`` lists the
    files written by this call (empty when everything was already there); ``checksum``
    is ``"verified"`` when every file matched a pinned SHA-256, ``"not pinned"`` when
    the download was checked by decoding and comparing shapes only.
    """

    name: str
    directory: Path | None
    downloaded: tuple[Path, ...]
    checksum: str

    @property
    def message(self) -> str:
        """One line for the user saying what was done and how it was verified."""
        if self.directory is None:
            return f"{self.name}: {self.checksum}; nothing to download"
        done = (
            f"downloaded {len(self.downloaded)} file(s) to {self.directory}"
            if self.downloaded
            else f"already present in {self.directory}"
        )
        if self.checksum == VERIFIED:
            return f"{self.name}: {done}; SHA-256 verified"
        return f"{self.name}: {done}; checksum {self.checksum}: unverified by hash (shape-checked)"


_URL_SCHEMES = ("http", "https", "file")


def _join_url(base: str, file_name: str) -> str:
    return f"{base.rstrip('/')}/{urllib.parse.quote(file_name)}"


def _network_reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return sources.describe(exc)


def _download(
    url: str, directory: Path, file_name: str, progress: ProgressCallback | None, timeout: float
) -> Path:
    """Download ``url`` into a temporary file in ``directory`` named ``...-<file_name>``.

    The caller renames it into place once verified, or deletes it.
    """
    if urllib.parse.urlsplit(url).scheme not in _URL_SCHEMES:
        raise DataError(f"{url}: unsupported URL scheme (use {', '.join(_URL_SCHEMES)})")
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".fetch-", suffix=f"-{file_name}")
    except OSError as exc:
        raise data_error(directory, f"cannot write to the cache directory ({exc})") from exc
    temp = Path(name)
    request = urllib.request.Request(url, headers={"User-Agent": f"fedmoe/{__version__}"})
    try:
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=timeout) as response,
        ):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(file_name, done, total)
        if total is not None and done != total:
            raise DataError(f"{url}: download truncated: received {done} of {total} bytes")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        temp.unlink(missing_ok=True)
        reason = _network_reason(exc)
        raise DataError(sources.one_line(f"{url}: download failed ({reason})")) from exc
    except BaseException:  # DataError, KeyboardInterrupt, ...: leave no partial file
        temp.unlink(missing_ok=True)
        raise
    return temp


def _reusable(spec: FileSpec, path: Path | None) -> bool:
    """Whether an already cached file can be kept (present, and matching if pinned)."""
    if path is None:
        return False
    if spec.sha256 is None:
        return True
    try:
        digest, size = sources.content_digest(path)
        spec.check_digest(digest, size, path)
    except DataError:
        return False
    return True


def fetch_dataset(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    url_base: str | None = None,
    *,
    progress: ProgressCallback | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> FetchResult:
    """Download dataset ``name`` into ``<cache_dir or cache_root()>/<name>`` and verify it.

    Files come from ``url_base``, else ``$FEDMOE_MIRROR``, else the canonical location.
    Each file is written to a temporary name, checked (SHA-256 of its decompressed
    contents where pinned, then the whole dataset decoded and compared with the spec)
    and only then renamed into place; a bad download is deleted and raises DataError.
    Cached files that fail their pinned checksum are replaced. Built-in datasets are
    generated instead (nothing is downloaded).
    """
    spec = get_spec(name)
    if isinstance(spec.source, BuiltinSource):
        generated(spec)
        return FetchResult(spec.name, None, (), BUILT_IN)
    base = url_base or os.environ.get("FEDMOE_MIRROR", "").strip() or spec.url_base
    if not base:
        raise DataError(sources.one_line(f"{spec.name}: {spec.how_to_get()}"))
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    target = root / spec.name
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise data_error(target, f"cannot create the cache directory ({exc})") from exc

    files: dict[str, Path] = {}
    pending: list[tuple[Path, Path, Path | None]] = []  # (temp, final, stale file to remove)
    try:
        for role, file_spec in spec.source.downloads().items():
            existing = file_spec.find(target)
            if _reusable(file_spec, existing):
                assert existing is not None
                files[role] = existing
                continue
            url = _join_url(base, file_spec.download_name)
            temp = _download(url, target, file_spec.download_name, progress, timeout)
            pending.append((temp, target / file_spec.download_name, existing))
            if file_spec.sha256 is not None:
                file_spec.check_digest(*sources.content_digest(temp, gzipped=True), url)
            files[role] = temp
        decoded = spec.source.decode(files)
        check_splits(spec, decoded)
    except BaseException as exc:
        for temp, _, _ in pending:
            temp.unlink(missing_ok=True)
        if pending and isinstance(exc, DataError):
            raise DataError(f"{exc}; the downloaded files were discarded") from exc
        raise
    for temp, final, stale in pending:
        os.replace(temp, final)
        if stale is not None and stale != final:
            stale.unlink(missing_ok=True)
    return FetchResult(
        spec.name,
        target,
        tuple(final for _, final, _ in pending),
        overall_checksum(spec, decoded.checksums),
    )
