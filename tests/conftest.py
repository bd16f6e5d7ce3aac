"""Shared fixtures: the real data in ../shared/data, one in-process Ray, one prepared tiny dataset."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from dist_s2s.config import Config, ModelConfig, load_config
from dist_s2s.data.batch import Batch
from dist_s2s.data.vocab import BOS_ID, EOS_ID, PAD_ID
from dist_s2s.model.seq2seq import Seq2Seq
from dist_s2s.parallel.placement import placement
from dist_s2s.parallel.wavefront.operations import StageOperations
from dist_s2s.parallel.wavefront.program import step_program, time_chunks
from dist_s2s.parallel.wavefront.transport import LocalTransport

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIST_S2S_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
"""The real corpora (../shared/data beside the repository; DIST_S2S_SHARED_DATA names another place)."""
CORPORA_FIXTURES = {"prepared_tiny", "prepared_tiny_forward", "prepared_tiny_subwords", "trained_tiny", "ray_local"}
CORPORA_NAMES = ("SHARED_DATA", "tiny_config", "prepared", "corpus_args")
IN_A_WORKER = os.environ.get("PYTEST_XDIST_WORKER") is not None
"""This process is a pytest-xdist worker (xdist sets the variable before conftest.py is imported)."""


def pytest_collection_modifyitems(config, items):
    """`corpora` on every test that reads the real corpora: through a fixture that prepares them, or by naming
    them in its body or its module's helpers; skipped, with the reason, where they are missing. An `alone` test
    is skipped in a pytest-xdist worker, where another worker's processes would see what it does. Under
    pytest-xdist the suites that start launchers come first, each kept whole: handed out a test at a time
    (--maxschedchunk 1), the long tests start early on both workers and the short ones even out their ends."""
    import inspect

    missing = not (SHARED_DATA / "multi30k").is_dir()
    skip = pytest.mark.skip(reason=f"needs the corpora in {SHARED_DATA} (../shared/data beside the repository, "
                                   "or DIST_S2S_SHARED_DATA): see tests/README.md")
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        if CORPORA_FIXTURES & set(item.fixturenames) or any(name in source for name in CORPORA_NAMES) \
                or item.get_closest_marker("corpora"):
            item.add_marker(pytest.mark.corpora)
            if missing:
                item.add_marker(skip)
        if item.get_closest_marker("alone") and IN_A_WORKER:
            item.add_marker(pytest.mark.skip(reason="changes what every process on the machine sees: run it by "
                                                    "itself, `pytest -m alone tests` (tests/README.md)"))
    if IN_A_WORKER:  # every worker collects the same order
        launches = {item.path for item in items if item.get_closest_marker("launcher")}
        items.sort(key=lambda item: item.path not in launches)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # in-process Ray on 127.0.0.1, as the CLI has it
if IN_A_WORKER:  # two workers on 2 cores: one thread each, and each command they start,
    os.environ["OMP_NUM_THREADS"] = "1"  # or a worker's two threads wait on a preempted one
    torch.set_num_threads(1)


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """configs/tiny.yaml reading the shared data and writing under tmp_path."""
    return load_config(REPO / "configs" / "tiny.yaml", [
        f"--data.root={SHARED_DATA}", f"--data.out_dir={tmp_path / 'data'}", f"--train.run_dir={tmp_path / 'run'}",
        *overrides,
    ])


def start_local_ray():
    """This session's in-process Ray (what `ray_local` holds); a test that stopped it starts it again."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
             logging_level="WARNING")
    return ray


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the whole session (a worker's, under pytest-xdist): starting it costs seconds."""
    ray = start_local_ray()
    yield ray
    ray.shutdown()


def made_once(tmp_path_factory, name: str, make) -> Path:
    """A directory `name` of this session's own, filled by `make(directory)` once for the whole run: under
    pytest-xdist the first worker to ask makes it while the other waits on a lock, and each worker takes its
    own copy, so that what a worker's tests write there (evaluations, MLflow runs) meets only its own tests."""
    import shutil

    from filelock import FileLock

    own = tmp_path_factory.mktemp(name)
    if not IN_A_WORKER:
        make(own)
        return own
    shared = tmp_path_factory.getbasetemp().parent  # this run's, above its workers' own
    made, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            made.mkdir()
            make(made)
            done.touch()
    shutil.copytree(made, own, symlinks=True, dirs_exist_ok=True)
    return own


def prepared_once(request, tmp_path_factory, name: str, *overrides: str) -> Config:
    """The tiny config with `overrides`, prepared once for the run (Ray started only by whoever prepares)."""
    from dist_s2s.data.prepare import prepare

    def make(directory: Path) -> None:
        request.getfixturevalue("ray_local")
        prepare(tiny_config(directory, *overrides))

    return tiny_config(made_once(tmp_path_factory, name, make), *overrides)


@pytest.fixture(scope="session")
def prepared_tiny(request, tmp_path_factory) -> Config:
    """The tiny config prepared once (Multi30k train/valid/test2016)."""
    return prepared_once(request, tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def prepared_tiny_forward(request, tmp_path_factory) -> Config:
    """The tiny config prepared once with the source in its own order (data.reverse_source=false)."""
    return prepared_once(request, tmp_path_factory, "tiny-forward", "--data.reverse_source=false")


@pytest.fixture(scope="session")
def prepared_tiny_subwords(request, tmp_path_factory) -> Config:
    """The tiny config prepared once with SentencePiece vocabularies (data.vocabulary=sentencepiece)."""
    return prepared_once(request, tmp_path_factory, "tiny-subwords", "--data.vocabulary=sentencepiece")


@pytest.fixture(scope="session")
def trained_tiny(prepared_tiny, tmp_path_factory):
    """30 tiny steps ending with the evaluation of test2016 (eval.after_training); config args and stdout."""
    import contextlib
    import io

    from dist_s2s.cli import main
    from dist_s2s.train.checkpoint import CheckpointDir

    def make(directory: Path) -> None:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["train", *arguments(directory), "--train.max_steps=30", "--eval.after_training=true",
                         "--eval.beam_size=2"]) == 0
        (directory / "stdout.txt").write_text(printed.getvalue())

    def arguments(directory: Path) -> list[str]:
        return ["--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
                f"--data.out_dir={prepared_tiny.data.out_dir}", f"--train.run_dir={directory / 'run'}"]

    directory = made_once(tmp_path_factory, "translate", make)
    checkpoint = str(CheckpointDir(directory / "run" / "checkpoints", 3).latest())
    return arguments(directory), checkpoint, (directory / "stdout.txt").read_text()


def write_corpus(root: Path, prefix: str, src: bytes | str, tgt: bytes | str) -> None:
    """Write `<prefix>.en` / `<prefix>.fr` under root from raw bytes or text."""
    for suffix, content in (("en", src), ("fr", tgt)):
        path = root / f"{prefix}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def launcher_env(tmp_path: Path) -> dict[str, str]:
    """For torchrun / deepspeed on CPU: gloo, one thread a rank, launcher litter kept under tmp_path."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}


def assert_runs_under_nccl_rules(log_dir: Path) -> None:
    """The ranks' logged communication (DIST_S2S_COMM_LOG) completes under NCCL's rules, whichever way
    PyTorch sets up the communicators (`dist_s2s.parallel.nccl_rules`)."""
    from dist_s2s.parallel.nccl_rules import COMMUNICATOR_MODELS, load, replay

    ranks = load(log_dir)
    for model in COMMUNICATOR_MODELS:
        verdict = replay(ranks, model)
        assert verdict.ok, f"{model} communicators: {verdict}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again before returning)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, seconds: float, alive=lambda: True) -> None:
    """Poll until `url` answers at all (an HTTP error status counts: the server is up).

    Gives up after `seconds`, or as soon as `alive()` says the server process has died.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline or not alive():
                raise
            time.sleep(0.5)


def start_mlflow_server(directory: Path, port: int):
    """cluster/start-mlflow-server.sh on `port`, its store in `directory`; the process once /health
    answers (a restart on the same directory keeps the runs)."""
    import signal
    import subprocess

    with open(directory / "server.log", "a") as log:
        server = subprocess.Popen(["bash", str(REPO / "cluster" / "start-mlflow-server.sh")], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "MLFLOW_STORE": str(directory), "MLFLOW_PORT": str(port)})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", 90, alive=lambda: server.poll() is None)
    except OSError:
        os.killpg(server.pid, signal.SIGKILL)
        raise RuntimeError((directory / "server.log").read_text()[-2000:]) from None
    return server


def stop_server(server) -> None:
    """SIGKILL the server's whole process group (gunicorn/uvicorn workers included)."""
    import signal

    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def listening_addresses(pid: int) -> set[str]:
    """The IP addresses that process `pid` and its descendants accept connections on
    (IPv4-mapped IPv6 as plain IPv4: ::ffff:127.0.0.1 is 127.0.0.1)."""
    import ipaddress

    import psutil

    root = psutil.Process(pid)
    processes = {root.pid, *(child.pid for child in root.children(recursive=True))}
    addresses = set()
    for connection in psutil.net_connections("inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in processes:
            address = ipaddress.ip_address(connection.laddr.ip)
            addresses.add(str(getattr(address, "ipv4_mapped", None) or address))
    return addresses


def batch_of(src_lengths: list[int], tgt_lengths: list[int], vocab: int = 40, seed: int = 0) -> Batch:
    """A padded batch of random ids with these source lengths and target words (+ </s>)."""
    generator = torch.Generator().manual_seed(seed)
    rows = len(src_lengths)
    src = torch.full((rows, max(src_lengths)), PAD_ID)
    tgt_in, tgt_out = (torch.full((rows, max(tgt_lengths) + 1), PAD_ID) for _ in range(2))
    for row, (s, t) in enumerate(zip(src_lengths, tgt_lengths)):
        src[row, :s] = torch.randint(4, vocab, (s,), generator=generator)
        words = torch.randint(4, vocab, (t,), generator=generator)
        tgt_in[row, :t + 1] = torch.cat([torch.tensor([BOS_ID]), words])
        tgt_out[row, :t + 1] = torch.cat([words, torch.tensor([EOS_ID])])
    return Batch(src=src, src_lengths=torch.tensor(src_lengths), tgt_in=tgt_in, tgt_out=tgt_out,
                 tgt_lengths=torch.tensor(tgt_lengths) + 1, lines=torch.zeros(rows, 2, dtype=torch.long),
                 step_sentences=rows)


def model_of(layers: int, shards: int, attention: str = "none") -> Seq2Seq:
    torch.manual_seed(3)
    config = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=layers, softmax_shards=shards,
                         attention=attention)
    return Seq2Seq(config, 40, 40).double()


def single_device_gradients(model: Seq2Seq, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    nll, _ = model(batch)
    (nll / batch.step_sentences).backward()
    return float(nll.detach()), {name: p.grad.clone() for name, p in model.named_parameters()}


def wavefront_gradients(model: Seq2Seq, batch: Batch, name: str, stages: int, chunk_steps: int, dropout=None):
    """Every stage's operations run in this process, in the program's global order."""
    layout = placement(name, len(model.encoder), len(model.softmax), stages)
    chunks = time_chunks(batch.src.shape[1], batch.tgt_out.shape[1], chunk_steps)
    transport = LocalTransport()
    operations = [StageOperations(model, layout, stage, batch=batch, chunks=chunks,
                                  loss_scale=1 / batch.step_sentences, transport=transport, dropout=dropout)
                  for stage in range(stages)]
    model.zero_grad(set_to_none=True)
    for op in step_program(layout, chunks):
        operations[op.stage].run(op)
    nll = sum(float(o.nll) for o in operations)
    return nll, {name: p.grad.clone() for name, p in model.named_parameters()}


def small_model(shards=2, vocab=(37, 41), seed=0, attention="none") -> Seq2Seq:
    torch.manual_seed(seed)
    config = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=2, softmax_shards=shards, init_range=0.08,
                         attention=attention)
    return Seq2Seq(config, *vocab).double()


def make_batch(sentences: list[tuple[list[int], list[int]]]) -> Batch:
    """Pad (source ids, target words) pairs the way the loader does."""
    width_src = max(len(s) for s, _ in sentences)
    width_tgt = max(len(t) for _, t in sentences) + 1
    src = torch.full((len(sentences), width_src), PAD_ID)
    tgt_in = torch.full((len(sentences), width_tgt), PAD_ID)
    tgt_out = torch.full((len(sentences), width_tgt), PAD_ID)
    for row, (s, t) in enumerate(sentences):
        src[row, :len(s)] = torch.tensor(s)
        tgt_in[row, :len(t) + 1] = torch.tensor([BOS_ID, *t])
        tgt_out[row, :len(t) + 1] = torch.tensor([*t, EOS_ID])
    lines = torch.tensor([[0, row + 1] for row in range(len(sentences))])  # sentence i is line i + 1
    return Batch(src=src, src_lengths=torch.tensor([len(s) for s, _ in sentences]), tgt_in=tgt_in, tgt_out=tgt_out,
                 tgt_lengths=torch.tensor([len(t) + 1 for _, t in sentences]), lines=lines,
                 step_sentences=len(sentences))


def run_pipeline(prepared, tmp_path, processes: int, *overrides: str, steps: int = 4, env=None) -> list[dict]:
    """`steps` pipeline steps beside the single-device trainer (pipeline_worker.py), every rank's
    communication logged into tmp_path/comms; each rank's result."""
    env = {**launcher_env(tmp_path), "DIST_S2S_COMM_LOG": str(tmp_path / "comms"), **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(REPO / "tests" / "pipeline_worker.py"), str(tmp_path), str(steps),
               f"--data.out_dir={prepared.data.out_dir}", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(processes)]


def own_device_waits(rank: dict) -> list[int]:
    """Per step after the first, the waits for the device (`sync_counter.py`) in dist-s2s's own code."""
    return [sum(count for where, count in step.items() if " @ deepspeed/" not in where) for step in rank["where"]]


def assert_lengths_varied(shapes: list[list[list[int]]], micro: int) -> None:
    """The match above covers batches of several (source, target) widths, and micro-batches of
    unequal widths within a step: a stage reading a stale or mis-shaped buffer could not match."""
    assert len({tuple(map(tuple, step)) for step in shapes}) == len(shapes), "every step has its own widths"
    if micro > 1:
        assert any(len({tuple(part) for part in step}) > 1 for step in shapes), "micro-batch widths differ in a step"


ADAM = ("--optim.optimizer=adam", "--optim.lr=0.003")
ADAM_STEP_TOLERANCE = 0.01 * 0.003
"""How far a pipeline's parameters may be from one device's after a few Adam steps: 1% of one step (lr). Adam
divides each gradient element by its running RMS, so where an element's contributions nearly cancel the float32
summation order of a pipeline (relative 1e-3 there) moves its update by that fraction of a step, whatever the
gradient's size. SGD's updates scale with the gradient: 1e-5 holds for them."""


def assert_optimizer_states_match(actual: dict | None, expected: dict) -> None:
    """Two optimizer states (`train.optimizer.optimizer_state`, unsharded; None: a checkpoint without one, plain
    SGD's): the same optimizer, step and parameters, each moment within 1e-4 relative."""
    import torch

    from dist_s2s.train.optimizer import MOMENTS

    actual = actual or {"kind": "sgd", "step": None}
    assert (actual["kind"], actual["step"]) == (expected["kind"], expected["step"])
    for moment in MOMENTS[expected["kind"]] if expected["step"] is not None else ():
        assert actual[moment].keys() == expected[moment].keys(), moment
        assert all(torch.allclose(actual[moment][k], expected[moment][k], rtol=1e-4, atol=1e-9)
                   for k in expected[moment]), moment


def assert_stage_parts_merge_into_the_single_device_weights(tmp_path, parts: list[dict], layers: int,
                                                            tolerance: float = 1e-5) -> None:
    """The stages' parts, merged, are the single-device trainer's weights and optimizer state; the weights load
    under another shard count."""
    import torch

    from dist_s2s.config import ModelConfig
    from dist_s2s.model.seq2seq import Seq2Seq
    from dist_s2s.train.checkpoint import read_model

    sizes = dict(embedding_dim=16, hidden_size=16, num_layers=layers)
    merged, optimizer = read_model(tmp_path / "pipeline.pt", {"model_parts": parts})
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert merged.keys() == reference.keys()
    assert all(torch.allclose(merged[k], reference[k], rtol=0, atol=tolerance) for k in merged)
    assert_optimizer_states_match(optimizer, torch.load(tmp_path / "reference-optimizer.pt", weights_only=True))
    attention = "luong" if any(key.startswith("attention.") for key in merged) else "none"
    Seq2Seq(ModelConfig(**sizes, softmax_shards=3, attention=attention), 500, 500).load_unsharded_state_dict(merged)
