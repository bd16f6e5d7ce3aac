"""`download`: corpora fetched over HTTP into data.root, checksummed, from a server on 127.0.0.1."""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import re
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


def load_archive_mirror():
    """`benchmarks/archive_mirror.py`: a static server that takes range requests and can cut a transfer off."""
    spec = importlib.util.spec_from_file_location("archive_mirror", REPO / "benchmarks" / "archive_mirror.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ArchiveMirror


LIUM_ARCHIVE = "www-lium.univ-lemans.fr/~schwenk/cslm_joint_paper/data/bitexts.tgz"
SELECTED_PARTS = ("ep7_pc45", "nc9", "dev08_11", "crawl", "ccb2_pc30", "un2000_pc34")


def lium_layout(site: Path) -> dict[str, bytes]:
    """A small `bitexts.tgz` in LIUM's layout (`bitexts.selected/<part>.<lang>.gz`), members in another order
    than the concatenation's; returns what each train file must hold."""
    expected = {"en": b"", "fr": b""}
    members = []
    for index, part in enumerate(SELECTED_PARTS):
        for lang in ("en", "fr"):
            text = "".join(f"{part} {lang} ligne {line} é\n" for line in range(300 * (index + 1))).encode()
            expected[lang] += text
            members.append((f"bitexts.selected/{part}.{lang}.gz", gzip.compress(text)))
    archive = site / LIUM_ARCHIVE
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return expected


def test_the_papers_selected_corpus_comes_out_of_lium_s_archive_layout(tmp_path):
    expected = lium_layout(tmp_path / "site")
    with load_archive_mirror()(tmp_path / "site") as mirror:
        download(tmp_path / "root", ["wmt14_selected"], archive_mirror=mirror.url)
    for lang in ("en", "fr"):
        assert (tmp_path / "root" / "wmt14_selected" / f"train.{lang}").read_bytes() == expected[lang]
    assert [path for path, _ in mirror.requests] == [LIUM_ARCHIVE], "the archive is fetched once for both files"


def test_a_transfer_cut_off_halfway_resumes_where_it_stopped_and_ends_with_the_right_files(tmp_path, caplog):
    expected = lium_layout(tmp_path / "site")
    half = (tmp_path / "site" / LIUM_ARCHIVE).stat().st_size // 2
    root = tmp_path / "root"
    with load_archive_mirror()(tmp_path / "site", cut_after={LIUM_ARCHIVE: half}) as mirror:
        with pytest.raises(UserError, match=rf"cut off at byte {half:,} of .* run the same command again"):
            download(root, ["wmt14_selected"], archive_mirror=mirror.url)
        assert not list((root / "wmt14_selected").glob("train.*")), "nothing under a final name, no file cut short"
        [partial] = root.rglob("bitexts.tgz.part")
        assert partial.stat().st_size == half
        with caplog.at_level(logging.INFO, logger="dist_s2s"):
            download(root, ["wmt14_selected"], archive_mirror=mirror.url)
    assert mirror.requests == [(LIUM_ARCHIVE, None), (LIUM_ARCHIVE, f"bytes={half}-")]
    for lang in ("en", "fr"):
        assert (root / "wmt14_selected" / f"train.{lang}").read_bytes() == expected[lang]
    assert f"resuming bitexts.tgz at byte {half:,}" in caplog.text
    assert re.search(r"download: bitexts\.tgz: [\d,]+ of [\d,]+ bytes done", caplog.text), "progress is shown"
    assert not list(root.rglob("*.part")) and not (root / ".downloads").exists()
