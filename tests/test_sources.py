"""Input files: scanned once, cut into aligned line ranges, refused when missing or misaligned."""

from __future__ import annotations

import random

import pytest
from conftest import write_corpus

from dist_s2s.config import CorpusConfig, DataConfig
from dist_s2s.data.sources import check_aligned, chunks, input_pairs, read_lines, scan_file
from dist_s2s.errors import UserError


@pytest.mark.parametrize("lines, chunk_lines, trailing_newline", [
    (1, 1, True), (10, 3, True), (10, 5, True), (10, 5, False), (7, 100, False), (1000, 7, True),
])
def test_chunks_reassemble_the_file_line_for_line(tmp_path, lines, chunk_lines, trailing_newline):
    rng = random.Random(lines)
    content = [("x" * rng.randrange(0, 30)).encode() for _ in range(lines)]
    data = b"\n".join(content) + (b"\n" if trailing_newline else b"")
    path = tmp_path / "f.en"
    path.write_bytes(data)
    scan = scan_file(path, chunk_lines)
    assert scan.lines == lines and scan.bytes == len(data)
    read = []
    for chunk in chunks(0, scan, scan, chunk_lines):
        read += read_lines(path, chunk.src_range, chunk.num_lines)
    assert read == content


def test_scan_counts_a_last_line_without_newline(tmp_path):
    path = tmp_path / "f.en"
    path.write_bytes(b"a\nb")
    assert scan_file(path, 10).lines == 2


def test_scan_finds_chunk_offsets_across_read_blocks(tmp_path):
    path = tmp_path / "big.en"
    line = b"y" * 999 + b"\n"
    path.write_bytes(line * 3000)  # 3 MB: several 1 MiB read blocks
    scan = scan_file(path, 1000)
    assert scan.chunk_offsets == (0, 1000 * 1000, 2000 * 1000)


def data_config(root, **corpus) -> DataConfig:
    return DataConfig(root=str(root), corpora=[CorpusConfig(**corpus)])


def test_missing_input_file_is_named(tmp_path):
    write_corpus(tmp_path, "c/train", "a\n", "b\n")
    (tmp_path / "c" / "train.fr").unlink()
    with pytest.raises(UserError, match=r"input file not found: .*c/train\.fr"):
        input_pairs(data_config(tmp_path, name="c", splits={"train": "c/train"}))


def test_missing_data_root_suggests_download(tmp_path):
    with pytest.raises(UserError, match="data root not found: .*dist-s2s download"):
        input_pairs(data_config(tmp_path / "absent", name="c", splits={"train": "c/train"}))


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    write_corpus(tmp_path, "c/train", "a\nb\nc\n", "x\ny\n")
    pair = input_pairs(data_config(tmp_path, name="c", splits={"train": "c/train"}))[0]
    with pytest.raises(UserError) as error:
        check_aligned(pair, scan_file(pair.src_path, 10), scan_file(pair.tgt_path, 10))
    message = str(error.value)
    assert "train.en has 3 lines" in message and "train.fr has 2 lines" in message


def test_empty_input_file_is_an_error(tmp_path):
    write_corpus(tmp_path, "c/train", "", "")
    pair = input_pairs(data_config(tmp_path, name="c", splits={"train": "c/train"}))[0]
    with pytest.raises(UserError, match=r"input file is empty: .*train\.en"):
        check_aligned(pair, scan_file(pair.src_path, 10), scan_file(pair.tgt_path, 10))
