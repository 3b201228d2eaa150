"""Downloading datasets (fedmoe.data.fetch.fetch_dataset) from a real HTTP server on
127.0.0.1 serving files the tests generate: verification, atomic placement, rejection of
bad downloads and clear errors for network failures."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmoe.data import DATASETS, dataset_info, fetch_dataset, load_dataset
from fedmoe.data.files import BUILT_IN, CifarFiles
from fedmoe.errors import DataError

pytestmark = pytest.mark.usefixtures("data_env")


@dataclass
class Server:
    """A file server on loopback: ``root`` is served at ``url``."""

    root: Path
    url: str
    requests: list[str] = field(default_factory=list)
    truncate: set[str] = field(default_factory=set)


class _Handler(SimpleHTTPRequestHandler):
    server_state: Server

    def do_GET(self) -> None:
        self.server_state.requests.append(self.path)
        if self.path.lstrip("/") in self.server_state.truncate:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only a few bytes")
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    state = Server(root, f"http://127.0.0.1:{httpd.server_port}/")
    _Handler.server_state = state
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def serve_idx(server: Server, formats: Any, splits: Any) -> None:
    for name, data in formats.idx_file_contents(splits).items():
        (server.root / f"{name}.gz").write_bytes(gzip.compress(data))


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch, formats: Any) -> Any:
    """``tiny-idx`` pinned to ``random_splits(0)``'s files, with no canonical URL."""
    spec = formats.tiny_idx_spec(splits=formats.random_splits(0), pinned=True)
    monkeypatch.setitem(DATASETS, spec.name, spec)
    return spec


def one_line_error(excinfo: pytest.ExceptionInfo[DataError], *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def test_fetch_verifies_and_places_files(
    server: Server, data_env: Any, formats: Any, pinned: Any
) -> None:
    splits = formats.random_splits(0)
    serve_idx(server, formats, splits)
    progress: list[tuple[str, int, int | None]] = []

    result = fetch_dataset("tiny-idx", url_base=server.url, progress=lambda *a: progress.append(a))

    target = data_env.cache / "tiny-idx"
    assert result.directory == target and result.checksum == "verified"
    assert sorted(p.name for p in result.downloaded) == sorted(f"{n}.gz" for n in formats.IDX_NAMES)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in result.downloaded)
    assert progress and all(total is not None and done <= total for _, done, total in progress)
    ds = load_dataset("tiny-idx")
    assert ds.source == str(target)
    np.testing.assert_array_equal(ds.x_test, splits.x_test)
    assert dataset_info("tiny-idx")["checksum"] == "verified"
    assert result.message == f"tiny-idx: downloaded 4 file(s) to {target}; SHA-256 verified"

    requests = len(server.requests)
    again = fetch_dataset("tiny-idx", url_base=server.url)
    assert again.downloaded == () and len(server.requests) == requests


def test_fetch_from_mirror_env_into_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: Server, formats: Any, pinned: Any
) -> None:
    serve_idx(server, formats, formats.random_splits(0))
    monkeypatch.setenv("FEDMOE_MIRROR", server.url)
    result = fetch_dataset("tiny-idx", cache_dir=tmp_path / "mine")
    assert result.directory == tmp_path / "mine" / "tiny-idx"
    assert load_dataset("tiny-idx", tmp_path / "mine").source == str(result.directory)


def test_checksum_mismatch_is_rejected_and_not_kept(
    server: Server, data_env: Any, formats: Any, pinned: Any
) -> None:
    splits = formats.random_splits(0)
    tampered = splits.x_train.copy()
    tampered[3, 0, 1, 1] ^= 0xFF
    serve_idx(server, formats, splits._replace(x_train=tampered))

    with pytest.raises(DataError) as excinfo:
        fetch_dataset("tiny-idx", url_base=server.url)

    one_line_error(
        excinfo,
        f"{server.url}train-images-idx3-ubyte.gz",
        "checksum mismatch",
        "discarded",
    )
    assert list((data_env.cache / "tiny-idx").iterdir()) == []
    with pytest.raises(DataError):
        load_dataset("tiny-idx")


def test_unpinned_download_is_shape_checked(
    monkeypatch: pytest.MonkeyPatch, server: Server, data_env: Any, formats: Any
) -> None:
    spec = formats.tiny_idx_spec()
    monkeypatch.setitem(DATASETS, spec.name, dataclasses.replace(spec, test_count=11))
    serve_idx(server, formats, formats.random_splits(0))
    with pytest.raises(DataError) as excinfo:
        fetch_dataset("tiny-idx", url_base=server.url)
    one_line_error(excinfo, "t10k-images-idx3-ubyte.gz", "(11, 1, 4, 3)", "discarded")
    assert list((data_env.cache / "tiny-idx").iterdir()) == []

    monkeypatch.setitem(DATASETS, spec.name, spec)
    result = fetch_dataset("tiny-idx", url_base=server.url)
    assert result.checksum == "not pinned" and len(result.downloaded) == 4
    assert result.message.endswith("checksum not pinned: unverified by hash (shape-checked)")
    again = fetch_dataset("tiny-idx", url_base=server.url)
    assert "already present in" in again.message


def test_corrupt_cached_file_is_replaced(
    server: Server, data_env: Any, formats: Any, pinned: Any
) -> None:
    target = data_env.cache / "tiny-idx"
    target.mkdir(parents=True)
    (target / "train-images-idx3-ubyte").write_bytes(b"half a file")
    serve_idx(server, formats, formats.random_splits(0))

    result = fetch_dataset("tiny-idx", url_base=server.url)

    assert result.checksum == "verified"
    assert not (target / "train-images-idx3-ubyte").exists()
    assert load_dataset("tiny-idx").x_train.shape == (20, 1, 4, 3)


def test_http_error_names_the_url(server: Server, data_env: Any, pinned: Any) -> None:
    with pytest.raises(DataError) as excinfo:
        fetch_dataset("tiny-idx", url_base=server.url)
    one_line_error(excinfo, f"{server.url}train-images-idx3-ubyte.gz", "download failed", "404")
    assert list((data_env.cache / "tiny-idx").iterdir()) == []


def test_truncated_download(server: Server, data_env: Any, formats: Any, pinned: Any) -> None:
    serve_idx(server, formats, formats.random_splits(0))
    server.truncate.add("t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as excinfo:
        fetch_dataset("tiny-idx", url_base=server.url)
    one_line_error(excinfo, f"{server.url}t10k-images-idx3-ubyte.gz")
    assert list((data_env.cache / "tiny-idx").iterdir()) == []


def test_connection_refused_names_the_url(pinned: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DataError) as excinfo:
        fetch_dataset("tiny-idx", url_base=url)
    one_line_error(excinfo, f"{url}train-images-idx3-ubyte.gz", "download failed")


def test_silent_server_times_out(pinned: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(DataError) as excinfo:
            fetch_dataset("tiny-idx", url_base=url, timeout=0.3)
    one_line_error(excinfo, url, "timed out")


def test_unsupported_scheme(pinned: Any) -> None:
    with pytest.raises(DataError) as excinfo:
        fetch_dataset("tiny-idx", url_base="ftp://example.org/data")
    one_line_error(excinfo, "ftp://example.org/data/", "unsupported URL scheme")


def test_emnist_is_not_fetchable() -> None:
    with pytest.raises(DataError) as excinfo:
        fetch_dataset("emnist-balanced")
    one_line_error(excinfo, "emnist-balanced", "not fetched automatically", "gzip.zip")


def test_builtin_fetch_downloads_nothing() -> None:
    result = fetch_dataset("digits")
    assert result.directory is None and result.downloaded == () and result.checksum == BUILT_IN
    assert result.message == "digits: built-in (generated locally, no files); nothing to download"


def test_cifar_tarball_fetch(
    monkeypatch: pytest.MonkeyPatch, server: Server, data_env: Any, formats: Any
) -> None:
    source = DATASETS["cifar100"].source
    assert isinstance(source, CifarFiles)
    splits = formats.cifar_splits(2, 100)
    monkeypatch.setitem(DATASETS, "cifar100", formats.tiny_cifar_spec("cifar100", splits))
    tarball = formats.cifar_tar_bytes(source.layout, splits)
    (server.root / "cifar-100-python.tar.gz").write_bytes(tarball)

    result = fetch_dataset("cifar100", url_base=server.url)

    assert result.checksum == "not pinned"
    assert [p.name for p in result.downloaded] == ["cifar-100-python.tar.gz"]
    ds = load_dataset("cifar100")
    assert ds.source == str(data_env.cache / "cifar100")
    np.testing.assert_array_equal(ds.x_train, splits.x_train)
