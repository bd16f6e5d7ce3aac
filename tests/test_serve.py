"""`dist-s2s serve`: the API against `translate`'s results, its limits and refusals, dynamic batching, a client
that leaves, and the page in a real headless browser (Debian's Chromium through Selenium).

One tiny model with attention trained once for the module; each server runs in this process (uvicorn in a
thread, on a free port of 127.0.0.1), except the command-line one, which is a process of its own."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn
from conftest import REPO, SHARED_DATA, free_port, listening_addresses, tiny_config, wait_for_http

from dist_s2s.data.shards import sha256_file
from dist_s2s.decode.translator import Translator
from dist_s2s.serve.app import create_app
from dist_s2s.serve.batcher import Batcher, Options, Overloaded
from dist_s2s.train.checkpoint import CheckpointDir
from dist_s2s.train.trainer import train

SENTENCES = ["A man is playing a guitar.", "Two dogs run on the beach.", "A woman reads a book in the park.",
             "Children are playing football.", "", "A red car."]


@pytest.fixture(scope="module")
def model(prepared_tiny, tmp_path_factory):
    """A tiny attention model trained 30 steps: its config and checkpoint."""
    run_dir = tmp_path_factory.mktemp("serve") / "run"
    config = tiny_config(run_dir.parent, f"--data.out_dir={prepared_tiny.data.out_dir}", f"--train.run_dir={run_dir}",
                         "--model.attention=luong", "--train.max_steps=30", "--train.valid_every=1000")
    train(config)
    return config, CheckpointDir(run_dir / "checkpoints", 3).latest()


class Server:
    """uvicorn serving `create_app(...)` in a thread of this process."""

    def __init__(self, config, checkpoint: Path, **serve):
        self.config = replace(config, serve=replace(config.serve, **serve))
        self.app = create_app(self.config, [checkpoint])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_for_http(self.url + "/health", 30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def post(self, body: bytes | dict, path: str = "/translate") -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())


def test_translations_come_back_in_order_as_translate_gives_them(model):
    config, checkpoint = model
    expected = Translator(config, [checkpoint]).translate(SENTENCES, beam=3, nbest=2)
    with Server(config, checkpoint) as server:
        status, answer = server.post({"sentences": SENTENCES, "beam": 3, "nbest": 2})
    assert status == 200
    assert [t["text"] for t in answer["translations"]] == [found[0].text for found in expected]
    assert [t["score"] for t in answer["translations"]] == pytest.approx([found[0].score for found in expected],
                                                                          abs=1e-3)
    assert [[h["text"] for h in t["nbest"]] for t in answer["translations"][:4]] == \
        [[h.text for h in found] for found in expected[:4]]
    assert answer["translations"][4] == {"text": "", "score": 0.0, "nbest": [{"text": "", "score": 0.0}]}, \
        "an empty line translates to an empty line"


def test_an_attention_model_answers_with_its_alignment(model):
    config, checkpoint = model
    with Server(config, checkpoint) as server:
        _, answer = server.post({"sentences": ["A man is playing a guitar."], "beam": 2})
    alignment = answer["translations"][0]["alignment"]
    assert alignment["source"] == ["A", "man", "is", "playing", "a", "guitar", "."], "reading order, not reversed"
    assert alignment["target"][-1] == "</s>" and len(alignment["weights"]) == len(alignment["target"])
    assert all(len(row) == len(alignment["source"]) and sum(row) == pytest.approx(1, abs=0.01)
               for row in alignment["weights"])


def test_health_names_the_model_its_checkpoint_and_the_manifest(model):
    config, checkpoint = model
    with Server(config, checkpoint) as server:
        health = server.get("/health")
    assert health["status"] == "ok" and health["attention"] is True
    assert health["models"] == [{"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint), "step": 30,
                                 "model": {"num_layers": 2, "hidden_size": config.model.hidden_size,
                                           "embedding_dim": config.model.embedding_dim, "attention": "luong"}}]
    manifest = Path(config.data.out_dir) / "manifest.json"
    assert health["manifest"]["sha256"] == sha256_file(manifest)


@pytest.mark.parametrize("body, status, message", [
    (b'{"sentences": ["caf\xe9"]}', 400, "not valid UTF-8 (byte 19)"),
    (b'{"sentences": [', 400, "not JSON"),
    ({"sentences": "A dog."}, 422, "'sentences' must be a list of strings"),
    ({"sentences": ["A dog."], "beam": 13}, 422, "'beam' must be an integer from 1 to 12"),
    ({"sentences": ["A dog."], "beam": 2, "nbest": 3}, 422, "'nbest' must be an integer from 1 to 2"),
    ({"sentences": ["A dog."], "length_penalty": "high"}, 422, "'length_penalty' must be a number"),
    ({"sentences": ["A dog."], "temperature": 1}, 422, "unknown field 'temperature'"),
    ([1, 2], 422, "must be a JSON object"),
    ({"sentences": ["a"] * 9}, 413, "9 sentences in one request; at most 8"),
    ({"sentences": ["a", "b" * 101]}, 413, "sentence 1 has 101 characters; at most 100"),
    ({"sentences": ["a"] * 5}, 503, "sentences are waiting to be decoded"),
], ids=["utf8", "json", "type", "beam", "nbest", "penalty", "unknown", "object", "sentences", "chars", "queue"])
def test_bad_requests_get_one_line_of_json_with_their_status(model, body, status, message):
    config, checkpoint = model
    with Server(config, checkpoint, max_sentences=8, max_chars=100, max_queued=4) as server:
        got, answer = server.post(body)
        assert server.post({"sentences": ["A dog."]})[0] == 200, "and the server goes on"
    assert got == status and message in answer["error"] and "\n" not in answer["error"], answer
    assert list(answer) == ["error"]


def test_no_sentences_is_no_translations(model):
    with Server(*model) as server:
        assert server.post({"sentences": []}) == (200, {"translations": []})


def test_requests_that_arrive_together_are_decoded_in_one_batch_with_translates_results(model):
    config, checkpoint = model
    expected = [found[0].text for found in Translator(config, [checkpoint]).translate(SENTENCES[:4] * 2, beam=2)]
    with Server(config, checkpoint, batch_wait_ms=1000) as server:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda s: server.post({"sentences": [s], "beam": 2}), SENTENCES[:4] * 2))
        batching = server.get("/health")["batching"]
    assert [a["translations"][0]["text"] for _, a in answers] == expected
    assert batching["batches"] == 1 and batching["largest_batch"] == 8, batching


def test_a_client_that_leaves_before_its_batch_starts_is_never_decoded(model):
    """The first request waits 1 s for company; a request with other options queues behind it, and its client
    hangs up meanwhile: it is dropped, never decoded."""
    config, checkpoint = model
    with Server(config, checkpoint, batch_wait_ms=1000) as server:
        first = threading.Thread(target=server.post, args=({"sentences": ["A dog."], "beam": 2},))
        first.start()
        time.sleep(0.2)
        leaving = socket.create_connection(("127.0.0.1", server.port))
        body = json.dumps({"sentences": ["A cat."], "beam": 1}).encode()
        leaving.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.3)
        leaving.close()
        first.join()
        time.sleep(0.3)
        batching = server.get("/health")["batching"]
        assert server.post({"sentences": ["A dog."], "beam": 2})[0] == 200
    assert batching["dropped_requests"] == 1 and batching["batches"] == 1, batching


def test_the_batcher_joins_only_requests_with_the_same_options_and_bounds_its_queue():
    decoded, release = [], threading.Event()

    def decode(sources, options):
        release.wait(10)
        decoded.append((len(sources), options.beam))
        return [[f"{options.beam}:{ids}"] for ids in sources]

    batcher = Batcher(decode, max_batch=4, batch_wait_s=0.2, max_queued=5)
    try:
        jobs = [batcher.submit([[1]], Options(2, 1, 0.0)), batcher.submit([[2], [3]], Options(2, 1, 0.0)),
                batcher.submit([[4]], Options(5, 1, 0.0)), batcher.submit([[5]], Options(2, 1, 0.0))]
        with pytest.raises(Overloaded):
            batcher.submit([[6], [7]], Options(2, 1, 0.0))  # 5 queued or decoding would become 7
        release.set()
        results = [job.result.result(timeout=10) for job in jobs]
    finally:
        batcher.close()
    assert decoded == [(4, 2), (1, 5)]
    assert results == [[["2:[1]"]], [["2:[2]"], ["2:[3]"]], [["5:[4]"]], [["2:[5]"]]]


def record_batches(max_batch: int, wait_s: float, max_wait_s: float, arrivals: list[float]) -> list[int]:
    """The batch sizes a batcher forms from one-sentence requests submitted at `arrivals` (seconds from the
    first)."""
    sizes = []

    def decode(sources, options):
        sizes.append(len(sources))
        return [[ids] for ids in sources]

    batcher = Batcher(decode, max_batch=max_batch, batch_wait_s=wait_s, batch_max_wait_s=max_wait_s, max_queued=64)
    try:
        started, jobs = time.monotonic(), []
        for at in arrivals:
            time.sleep(max(0.0, started + at - time.monotonic()))
            jobs.append(batcher.submit([[len(jobs)]], Options(2, 1, 0.0)))
        assert [job.result.result(timeout=10) for job in jobs] == [[[[i]]] for i in range(len(jobs))]
    finally:
        batcher.close()
    return sizes


def test_a_batch_gathers_requests_while_they_keep_coming_closer_than_the_wait():
    """Clients answered together come back one by one: 0.25 s apart with a 0.6 s gap, five requests over a
    second share one batch (a fixed 0.6 s wait from the first would have split them); a request after a
    quiet spell starts the next."""
    assert record_batches(64, 0.6, 10.0, [0.0, 0.25, 0.5, 0.75, 1.0, 2.2]) == [5, 1]


def test_a_batch_closes_at_its_longest_wait_even_while_requests_keep_coming():
    assert record_batches(64, 0.8, 1.4, [0.0, 0.4, 0.8, 1.2, 1.6, 2.0]) == [4, 2]


def test_after_a_batch_the_gap_counts_only_once_its_clients_have_come_back():
    """Three requests answered together come back 0.3 s apart, wider than the 0.2 s gap: they still share the
    next batch (the gap alone would decode them one by one), closing a gap after the third."""
    assert record_batches(64, 0.2, 3.0, [0.0, 0.0, 0.0, 0.5, 0.8, 1.1]) == [3, 3]


def test_a_full_batch_closes_at_once_without_waiting():
    started = time.monotonic()
    assert record_batches(3, 10.0, 10.0, [0.0, 0.0, 0.0]) == [3]
    assert time.monotonic() - started < 5


def test_the_command_listens_on_127_0_0_1_only_and_serves_the_best_checkpoint(model, tmp_path):
    config, checkpoint = model
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "dist_s2s", "serve", "--config", str(REPO / "configs" / "tiny.yaml"),
         f"--data.root={SHARED_DATA}", f"--data.out_dir={config.data.out_dir}", f"--train.run_dir={tmp_path}",
         "--checkpoint", str(checkpoint), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", 60, alive=lambda: server.poll() is None)
        assert listening_addresses(server.pid) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as health:
            assert json.loads(health.read())["kernel_cache"] == "128", "oneDNN keeps serve.kernel_cache kernels"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert b"<title>dist-s2s</title>" in page.read()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert f"on http://127.0.0.1:{port}/" in output


def test_the_page_translates_a_sentence_and_draws_its_attention_in_a_real_browser(model, tmp_path):
    """Fails, never skips, without the browser: scripts/setup.sh installs Debian's chromium and chromium-driver."""
    assert shutil.which("chromium") and shutil.which("chromedriver"), \
        "no chromium / chromedriver: run scripts/setup.sh (as root it apt-gets chromium and chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    config, checkpoint = model
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,900"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    with Server(config, checkpoint) as server:
        browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
        try:
            browser.get(server.url + "/")
            WebDriverWait(browser, 30).until(lambda b: "step 30" in b.find_element(By.ID, "model").text)
            box = browser.find_element(By.ID, "sentences")
            box.clear()
            box.send_keys("A man is playing a guitar.")
            browser.find_element(By.ID, "translate").click()
            WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, ".result table.heatmap")))
            text = browser.find_element(By.CSS_SELECTOR, ".result .text").text
            cells = browser.find_elements(By.CSS_SELECTOR, ".result table.heatmap tbody td")
            items = browser.find_elements(By.CSS_SELECTOR, ".result .nbest li")
            browser.save_screenshot(str(tmp_path / "page.png"))
        finally:
            browser.quit()
    translator = Translator(config, [checkpoint])
    source = translator.source_ids("A man is playing a guitar.")
    expected = translator.translate_ids([source], 5, 3, length_penalty=0.6)[0]  # the page's defaults
    assert text == expected[0].text
    assert len(items) == 3
    alignment_cells = (len(expected[0].ids) + 1) * 7
    assert len(cells) == alignment_cells
    assert (tmp_path / "page.png").stat().st_size > 10_000
