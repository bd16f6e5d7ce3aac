"""`dist-s2s download` at WMT'14's size: a multi-GB archive from a local mirror, cut off halfway and resumed.

    .venv/bin/python benchmarks/download_scale.py --corpus runs/synthetic/wmt14_like_12m \
        --output benchmarks/results/download-scale.json

Builds LIUM's `bitexts.tgz` layout (`bitexts.selected/<part>.<lang>.gz`, the paper's 12M-pair
`wmt14_selected`) from the synthetic corpus (`synthetic_corpus.py`, cut into six parts), serves it
on 127.0.0.1 (`archive_mirror.py`: range requests, a transfer cut off after half the archive), and
runs `dist-s2s download --corpus wmt14_selected --archive-mirror URL` twice: the first run must
end with the one-line error and nothing under a final name, the second must resume at the cut and
write files whose sha256 is the corpus's. Peak RSS of each download process is sampled throughout.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil
from archive_mirror import ArchiveMirror

ARCHIVE = "www-lium.univ-lemans.fr/~schwenk/cslm_joint_paper/data/bitexts.tgz"
PARTS = ("ep7_pc45", "nc9", "dev08_11", "crawl", "ccb2_pc30", "un2000_pc34")


def build_site(corpus: Path, site: Path, pairs: int | None) -> tuple[dict[str, str], int]:
    """The archive, streamed part by part; returns each language's expected sha256 and the pairs used."""
    if pairs is None:
        pairs = sum(1 for _ in open(corpus / "train.en", "rb"))
    per_part = -(-pairs // len(PARTS))
    staging = Path(tempfile.mkdtemp(dir=site.parent))
    digests = {}
    for lang in ("en", "fr"):
        digest = hashlib.sha256()
        with open(corpus / f"train.{lang}", "rb") as source:
            for index, part in enumerate(PARTS):
                count = min(per_part, pairs - index * per_part)
                with gzip.open(staging / f"{part}.{lang}.gz", "wb", compresslevel=1) as out:
                    for _ in range(count):
                        line = source.readline()
                        digest.update(line)
                        out.write(line)
        digests[lang] = digest.hexdigest()
    archive = site / ARCHIVE
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for lang in ("en", "fr"):
            for part in PARTS:
                tar.add(staging / f"{part}.{lang}.gz", arcname=f"bitexts.selected/{part}.{lang}.gz")
    for path in staging.iterdir():
        path.unlink()
    staging.rmdir()
    return digests, pairs


def run_download(url: str, root: Path) -> dict:
    """One `dist-s2s download` process: exit code, seconds, peak RSS (sampled every 0.2 s), its stderr."""
    command = [sys.executable, "-m", "dist_s2s", "download", f"--data.root={root}", "--corpus", "wmt14_selected",
               "--archive-mirror", url]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    return {"code": process.returncode, "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(peak / 2**20), "stderr": stderr}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a synthetic_corpus.py output (train.en, train.fr)")
    parser.add_argument("--pairs", type=int, help="the first N pairs only (default: all)")
    parser.add_argument("--work", default="runs/download-scale")
    parser.add_argument("--output", help="append the result to this JSON file")
    args = parser.parse_args()
    work = Path(args.work)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    (work / "site").mkdir(parents=True)
    started = time.perf_counter()
    expected, pairs = build_site(Path(args.corpus), work / "site", args.pairs)
    archive_bytes = (work / "site" / ARCHIVE).stat().st_size
    print(f"built {archive_bytes / 2**30:.2f} GiB archive of {pairs:,} pairs in {time.perf_counter() - started:.0f} s",
          flush=True)
    half = archive_bytes // 2
    root = work / "root"
    with ArchiveMirror(work / "site", cut_after={ARCHIVE: half}) as mirror:
        cut = run_download(mirror.url, root)
        partials = list(root.rglob("bitexts.tgz.part"))
        after_cut = {"code": cut["code"], "error": cut["stderr"].strip().splitlines()[-1] if cut["stderr"] else "",
                     "files_left": sorted(str(p.relative_to(root)) for p in root.rglob("train.*")),
                     "partial_bytes": partials[0].stat().st_size if partials else None,
                     "seconds": cut["seconds"], "peak_rss_mb": cut["peak_rss_mb"]}
        print(f"cut off: exit {after_cut['code']}, {after_cut['error']!r}, partial {after_cut['partial_bytes']:,} "
              f"bytes, files left {after_cut['files_left']}, peak RSS {cut['peak_rss_mb']} MB", flush=True)
        resumed = run_download(mirror.url, root)
    outputs = {lang: root / "wmt14_selected" / f"train.{lang}" for lang in ("en", "fr")}
    result = {
        "pairs": pairs, "archive_bytes": archive_bytes, "cut_at_byte": half,
        "output_bytes": {lang: path.stat().st_size for lang, path in outputs.items() if path.is_file()},
        "first_run": after_cut,
        "second_run": {"code": resumed["code"], "seconds": resumed["seconds"], "peak_rss_mb": resumed["peak_rss_mb"],
                       "progress_lines": sum("bytes done" in line for line in resumed["stderr"].splitlines()),
                       "resumed_line": next((line for line in resumed["stderr"].splitlines() if "resuming" in line),
                                            None)},
        "requests": mirror.requests,
        "sha256_equal": {lang: path.is_file() and sha256_of(path) == expected[lang] for lang, path in outputs.items()},
        "leftover_partials": [str(p) for p in root.rglob("*.part")],
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "requests"}, indent=2))
    if args.output:
        path = Path(args.output)
        existing = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        existing["runs"].append(result)
        path.write_text(json.dumps(existing, indent=2) + "\n")
    ok = (after_cut["code"] != 0 and not after_cut["files_left"] and after_cut["partial_bytes"] == half
          and resumed["code"] == 0 and all(result["sha256_equal"].values()) and not result["leftover_partials"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
