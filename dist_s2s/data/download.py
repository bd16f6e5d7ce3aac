"""`dist-s2s download`: fetch the public corpora into data.root, in the layout `prepare` reads.

Upstream, files come out of release archives (gzip, tar members, WMT SGML); with `--mirror URL`
each file is fetched ready-made as `URL/<path under data.root>` (an institute's mirror, or a
local copy as in the tests), and with `--archive-mirror URL` the upstream archives themselves
come from `URL/<host>/<path>` (a copy of statmt.org's layout). Files whose checksum is published
are verified; a mismatch leaves nothing under the final name. Downloaded archives are cached in
`data.root/.downloads` until every file of the corpus is written; an archive's transfer that is
cut off keeps its `.part` file, and the same command again resumes it where it stopped (an HTTP
range request). Everything streams: memory does not grow with a multi-GB archive.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dist_s2s.data.shards import sha256_file
from dist_s2s.errors import UserError
from dist_s2s.progress import Progress

log = logging.getLogger(__name__)

_MULTI30K = "https://raw.githubusercontent.com/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/"
_STATMT = "https://www.statmt.org/"
_LIUM = "http://www-lium.univ-lemans.fr/~schwenk/cslm_joint_paper/data/"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One piece of a local file: a URL, optionally a member of a tar archive, gzip or SGML inside."""

    url: str
    member: str | None = None
    gzip: bool = False
    sgm: bool = False


@dataclass(frozen=True)
class Target:
    """A file under data.root, made by concatenating its parts in order."""

    path: str
    parts: tuple[Part, ...]
    sha256: str | None = None
    """The published checksum of the result (`<data.root>/<corpus>/SOURCE.md`), when there is one."""


def _multi30k() -> tuple[Target, ...]:
    names = {"train": "train", "valid": "val", "test2016": "test_2016_flickr", "test2017": "test_2017_flickr",
             "test2017_mscoco": "test_2017_mscoco"}
    sums = {
        "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
        "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
        "valid.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
        "valid.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
        "test2016.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
        "test2016.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
        "test2017.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
        "test2017.fr": "6f3764e31dac41e9455e612958bcfd4e877c5e15cd66df2c2b2be6d9bd83e5b6",
        "test2017_mscoco.en": "43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2",
        "test2017_mscoco.fr": "39cde3f43f32b0a6bf29ce4917a46329ff32e53070c2fac87506695a740ae0a0",
    }
    return tuple(Target(f"multi30k/{local}.{lang}", (Part(f"{_MULTI30K}{remote}.{lang}.gz", gzip=True),),
                        sums[f"{local}.{lang}"])
                 for local, remote in names.items() for lang in ("en", "fr"))


def _wmt14_dev() -> tuple[Target, ...]:
    def seg(year: int, lang: str) -> Part:
        return Part(f"{_STATMT}wmt14/dev.tgz", member=f"dev/newstest{year}-src.{lang}.sgm", sgm=True)
    sums = {
        "newstest2012.en": "4ad37ce6758a083d4c73801896bc74350ae3d9b3cd68d086f6f5790d37e4c164",
        "newstest2012.fr": "e4efc61d0afe4f8b6d5fb14c8f7c161b82b0bb2daa952bcb87c893535e9e4db1",
        "newstest2013.en": "80b81d23ddfd16724aa21b288b21f29c825c8838807aecbc65fe8a1b313325de",
        "newstest2013.fr": "d197faafd03242c13f4589cc4c8391a8d33da7be08feab5b8759593ee04fda2e",
        "valid.en": "a1dcd1bd044bb5268f9f625f159f04ab7759a1936b9d3b90ee380062e9dbdc1e",
        "valid.fr": "dceb6dbe5644c54e18edbfadda86e326203a186b5537182750e0d3f0f2100ed4",
    }
    targets = [Target(f"wmt14_dev/newstest{year}.{lang}", (seg(year, lang),), sums[f"newstest{year}.{lang}"])
               for year in (2012, 2013) for lang in ("en", "fr")]
    targets += [Target(f"wmt14_dev/valid.{lang}", (seg(2012, lang), seg(2013, lang)), sums[f"valid.{lang}"])
                for lang in ("en", "fr")]
    return tuple(targets)


def _wmt14_test() -> tuple[Target, ...]:
    archive = f"{_STATMT}wmt14/test-full.tgz"
    return (
        Target("wmt14/newstest2014.en", (Part(archive, "test-full/newstest2014-fren-src.en.sgm", sgm=True),)),
        Target("wmt14/newstest2014.fr", (Part(archive, "test-full/newstest2014-fren-ref.fr.sgm", sgm=True),)),
    )


def _wmt14_train() -> tuple[Target, ...]:
    """All WMT'14 en-fr parallel training data (about 36M pairs).

    The paper trained on a 12M-pair "selected" subset of it (§3.1, after Schwenk); the selection
    itself is not part of the WMT release.
    """
    sources = [
        (f"{_STATMT}wmt13/training-parallel-europarl-v7.tgz", "training/europarl-v7.fr-en.{}", False),
        (f"{_STATMT}wmt13/training-parallel-commoncrawl.tgz", "commoncrawl.fr-en.{}", False),
        (f"{_STATMT}wmt13/training-parallel-un.tgz", "un/undoc.2000.fr-en.{}", False),
        (f"{_STATMT}wmt14/training-parallel-nc-v9.tgz", "training/news-commentary-v9.fr-en.{}", False),
        (f"{_STATMT}wmt10/training-giga-fren.tar", "giga-fren.release2.fixed.{}.gz", True),
    ]
    return tuple(Target(f"wmt14/train.{lang}", tuple(Part(url, member.format(lang), gzip=packed)
                                                    for url, member, packed in sources))
                 for lang in ("en", "fr"))


def _wmt14_selected() -> tuple[Target, ...]:
    """The paper's 12M pairs (§3.1): the subset of WMT'14 en-fr that Schwenk selected, published by LIUM
    beside the paper as `bitexts.tgz` (its six gzipped parts a language, concatenated as its users did).

    No checksum was published, and the address is a personal page of 2014: docs/data.md says what that means.
    """
    parts = ("ep7_pc45", "nc9", "dev08_11", "crawl", "ccb2_pc30", "un2000_pc34")
    return tuple(Target(f"wmt14_selected/train.{lang}",
                        tuple(Part(f"{_LIUM}bitexts.tgz", f"bitexts.selected/{part}.{lang}.gz", gzip=True)
                              for part in parts))
                 for lang in ("en", "fr"))


CORPORA = {
    "multi30k": _multi30k,
    "wmt14_dev": _wmt14_dev,
    "wmt14_test": _wmt14_test,
    "wmt14_train": _wmt14_train,
    "wmt14_selected": _wmt14_selected,
}


def download(root: str | Path, corpora: list[str], mirror: str | None = None,
             archive_mirror: str | None = None) -> list[Path]:
    """Fetch each named corpus into `root`; returns the files written or found intact."""
    root = Path(root)
    unknown = [name for name in corpora if name not in CORPORA]
    if unknown:
        raise UserError(f"unknown corpus {unknown[0]!r} (known: {', '.join(CORPORA)})")
    written = []
    for name in corpora:
        targets = CORPORA[name]()
        for target in targets:
            written.append(fetch_target(target, root, mirror, archive_mirror))
        _write_receipt(root, name, targets, mirror or archive_mirror)
    shutil.rmtree(root / ".downloads", ignore_errors=True)
    return written


def fetch_target(target: Target, root: Path, mirror: str | None = None, archive_mirror: str | None = None) -> Path:
    """Build one file under root from its parts (or from the mirror), verified, written atomically."""
    path = root / target.path
    if path.is_file() and (target.sha256 is None or sha256_file(path) == target.sha256):
        log.info("download: %s already present", path)
        return path
    if mirror:
        parts: tuple[Part, ...] = (Part(mirror.rstrip("/") + "/" + target.path),)
    elif archive_mirror:
        parts = tuple(Part(_rehosted(part.url, archive_mirror), part.member, part.gzip, part.sgm)
                      for part in target.parts)
    else:
        parts = target.parts
    temporary = path.with_name(path.name + ".part")
    try:
        digest = _assemble(parts, temporary, root)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a file cut short is rebuilt from its parts; an archive resumes
        raise
    if target.sha256 and digest.hexdigest() != target.sha256:
        temporary.unlink()
        raise UserError(f"checksum mismatch for {path} (from {parts[0].url}): "
                        f"expected sha256 {target.sha256}, got {digest.hexdigest()}")
    os.replace(temporary, path)
    log.info("download: %s (sha256 %s)", path, digest.hexdigest())
    return path


def _assemble(parts: tuple[Part, ...], temporary: Path, root: Path):
    """Write the parts one after the other into `temporary`; returns their sha256 (a hashlib object)."""
    digest = hashlib.sha256()
    try:
        temporary.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as out:
            for part in parts:
                for block in _part_bytes(part, root / ".downloads"):
                    digest.update(block)
                    out.write(block)
    except PermissionError as error:
        raise UserError(f"cannot write under data.root {root}: {error.strerror} (choose another --data.root)") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as error:  # a streamed part cut off
        raise UserError(f"transfer for {temporary.with_suffix('')} failed ({type(error).__name__}: {error}): run "
                        "the same command again") from None
    return digest


def _rehosted(url: str, archive_mirror: str) -> str:
    """`https://www.statmt.org/wmt14/dev.tgz` → `<archive_mirror>/www.statmt.org/wmt14/dev.tgz`."""
    parsed = urllib.parse.urlsplit(url)
    return f"{archive_mirror.rstrip('/')}/{parsed.netloc}{parsed.path}"


def _part_bytes(part: Part, cache: Path) -> Iterator[bytes]:
    if part.member is None:
        with _open_url(part.url) as response:
            stream: BinaryIO = gzip.GzipFile(fileobj=response) if part.gzip else response
            yield from _maybe_sgm(stream, part.sgm, part.url)
        return
    archive = _cached(part.url, cache)
    with tarfile.open(archive) as tar:
        try:
            member = tar.extractfile(part.member)
        except KeyError:
            raise UserError(f"{part.url} has no member {part.member}") from None
        stream = gzip.GzipFile(fileobj=member) if part.gzip else member
        yield from _maybe_sgm(stream, part.sgm, part.url)


def _cached(url: str, cache: Path) -> Path:
    """An archive downloaded once per run, though several files come out of it; a transfer cut off
    before the end resumes from its `.part` file when the server takes range requests."""
    path = cache / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with _open_url(request) as response:
        resumed = have > 0 and response.status == 206 and _range_start(response) == have
        if have and not resumed:
            log.info("download: %s does not resume a transfer: starting %s again", url, path.name)
            have = 0
        elif resumed:
            log.info("download: resuming %s at byte %s", path.name, f"{have:,}")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, "ab" if resumed else "wb") as out, \
                Progress(f"download: {path.name}", total or 0, unit="bytes", done=have, show=total is not None) as bar:
            try:
                while block := response.read(_BLOCK):
                    out.write(block)
                    bar.advance(len(block))
            except (http.client.HTTPException, OSError) as error:
                raise _cut_off(url, partial, total, error) from None
    if total is not None and partial.stat().st_size != total:
        raise _cut_off(url, partial, total, "the connection closed early")
    os.replace(partial, path)
    return path


def _range_start(response) -> int | None:
    """The first byte of a 206 response (`Content-Range: bytes 100-199/200`)."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


def _cut_off(url: str, partial: Path, total: int | None, reason) -> UserError:
    size = partial.stat().st_size if partial.is_file() else 0
    of = f" of {total:,}" if total is not None else ""
    return UserError(f"transfer of {url} cut off at byte {size:,}{of} ({reason}): run the same command again "
                     f"to resume it from {partial}")


def _open_url(url: str | urllib.request.Request):
    try:
        return urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError) as error:
        name = url.full_url if isinstance(url, urllib.request.Request) else url
        raise UserError(f"could not fetch {name}: {getattr(error, 'reason', error)}") from None


def _blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(_BLOCK):
        yield block


_SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def _maybe_sgm(stream: BinaryIO, sgm: bool, url: str) -> Iterator[bytes]:
    """The stream's bytes, or for WMT SGML one sentence per `<seg>`, with sacreBLEU's cleaning (strip,
    collapse whitespace), read a line at a time (a `<seg>` never spans lines in WMT's files)."""
    if not sgm:
        yield from _blocks(stream)
        return
    try:
        for line in io.TextIOWrapper(stream, encoding="utf-8", newline="\n"):
            for match in _SEG.finditer(line):
                yield (" ".join(match.group(1).split()) + "\n").encode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{url}: not UTF-8 SGML ({error.reason} at byte {error.start} of a line)") from None


def _write_receipt(root: Path, name: str, targets: tuple[Target, ...], mirror: str | None) -> None:
    receipt = {
        "corpus": name,
        "from": mirror or sorted({part.url for target in targets for part in target.parts}),
        "files": {target.path: sha256_file(root / target.path) for target in targets},
    }
    path = root / f"DOWNLOAD-{name}.json"
    path.write_text(json.dumps(receipt, indent=2) + "\n")

