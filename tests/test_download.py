"""`download`: corpora fetched over HTTP into data.root, checksummed, from a server on 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

from dist_s2s.cli import main
from dist_s2s.data.download import Part, Target, download, fetch_target
from dist_s2s.errors import UserError


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Serve a directory over HTTP on 127.0.0.1; yields a function dir → base URL."""
    servers = []

    def start(directory: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_multi30k_from_a_mirror_matches_the_published_checksums(serve, tmp_path):
    url = serve(SHARED_DATA)
    files = download(tmp_path, ["multi30k"], mirror=url)
    assert len(files) == 10
    for path in files:
        assert path.read_bytes() == (SHARED_DATA / path.relative_to(tmp_path)).read_bytes()
    assert (tmp_path / "DOWNLOAD-multi30k.json").is_file()
    assert not (tmp_path / ".downloads").exists()


def test_a_second_download_keeps_intact_files(serve, tmp_path):
    url = serve(SHARED_DATA)
    download(tmp_path, ["multi30k"], mirror=url)
    before = (tmp_path / "multi30k" / "train.en").stat().st_mtime_ns
    download(tmp_path, ["multi30k"], mirror=url)
    assert (tmp_path / "multi30k" / "train.en").stat().st_mtime_ns == before


def test_a_corrupt_file_is_refused_and_never_written(serve, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SHARED_DATA / "multi30k", mirror / "multi30k")
    (mirror / "multi30k" / "train.en").write_text("tampered\n")
    with pytest.raises(UserError, match=r"checksum mismatch for .*multi30k/train\.en"):
        download(tmp_path / "root", ["multi30k"], mirror=serve(mirror))
    assert not (tmp_path / "root" / "multi30k" / "train.en").exists()
    assert not list((tmp_path / "root").rglob("*.part"))


def test_upstream_archives_gzip_and_sgml_are_unpacked_into_one_file(serve, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    sgm = ('<srcset setid="t"><doc docid="d1">\n<seg id="1"> Hello \u00a0 world. </seg>\n'
           '<seg id="2">Second\tline.</seg>\n</doc></srcset>\n').encode()
    with tarfile.open(site / "dev.tgz", "w:gz") as tar:
        for name, data in (("dev/test-src.en.sgm", sgm), ("dev/more.en.gz", gzip.compress(b"third\n"))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (site / "plain.en.gz").write_bytes(gzip.compress(b"fourth\n"))
    url = serve(site)
    target = Target("c/valid.en", (Part(f"{url}/dev.tgz", "dev/test-src.en.sgm", sgm=True),
                                   Part(f"{url}/dev.tgz", "dev/more.en.gz", gzip=True),
                                   Part(f"{url}/plain.en.gz", gzip=True)))
    path = fetch_target(target, tmp_path / "root")
    assert path.read_text() == "Hello world.\nSecond line.\nthird\nfourth\n"


def test_a_missing_archive_member_is_named(serve, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    with tarfile.open(site / "a.tgz", "w:gz"):
        pass
    target = Target("c/x.en", (Part(f"{serve(site)}/a.tgz", "dev/absent.sgm"),))
    with pytest.raises(UserError, match="has no member dev/absent.sgm"):
        fetch_target(target, tmp_path / "root")


def test_an_unreachable_server_is_a_clear_error(serve, tmp_path):
    url = serve(tmp_path)  # serves an empty directory: 404 for everything
    with pytest.raises(UserError, match=r"could not fetch http://127\.0\.0\.1:\d+/multi30k/train\.en"):
        download(tmp_path / "root", ["multi30k"], mirror=url)


def test_unknown_corpus_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="unknown corpus 'wmt99' .*multi30k"):
        download(tmp_path, ["wmt99"])


def test_cli_download_writes_into_data_root(serve, tmp_path, capsys):
    code = main(["download", "--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={tmp_path}",
                 "--corpus", "wmt14_dev", "--mirror", serve(SHARED_DATA)])
    assert code == 0
    assert (tmp_path / "wmt14_dev" / "valid.fr").read_bytes() == (SHARED_DATA / "wmt14_dev" / "valid.fr").read_bytes()
