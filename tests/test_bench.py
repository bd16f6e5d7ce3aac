"""`dist-s2s bench` and the schedule simulator: a smoke test of the machinery, not of the speed."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, SHARED_DATA

from dist_s2s.bench.one_f_one_b_sim import StageCosts, one_f_one_b, simulate
from dist_s2s.cli import main
from dist_s2s.errors import UserError


@pytest.mark.launcher
def test_bench_times_every_mode_on_the_tiny_config_and_writes_its_json(prepared_tiny, tmp_path, capsys):
    output = tmp_path / "bench.json"
    assert main(["bench", "--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
                 f"--data.out_dir={prepared_tiny.data.out_dir}", "--mode", "plain", "single@1", "pipeline:2@1",
                 "pipeline:2@1/wavefront+chain", "side-by-side:2@1", "--steps", "2", "--warmup", "1",
                 "--output", str(output), "--parallel.schedule=1f1b", "--parallel.micro_batches=2"]) == 0
    result = json.loads(output.read_text())
    assert [r["label"] for r in result["runs"]] == ["plain@2", "single@1", "pipeline:2@1",
                                                    "pipeline:2@1/wavefront+chain", "side-by-side:2@1"]
    for run in result["runs"]:
        assert {"mode", "stages", "schedule", "threads_per_rank", "words_per_sec", "mfu", "peak_mem_mb"} <= run.keys()
        assert run["words_per_sec"] > 0 and 0 < run["mfu"] < 1 and run["peak_mem_mb"] > 0
    schedules = [r["schedule"] for r in result["runs"]]
    assert schedules == [None, None, "1f1b", "wavefront", None], "the config's, or the mode's own"
    assert result["runs"][2]["micro_batches"] == 2, "the config's micro-batches"
    assert result["runs"][3]["placement"] == "chain" and result["runs"][3]["micro_batches"] == 1
    assert result["runs"][0]["vs_plain"] == 1.0
    assert len(result["runs"][2]["peak_mem_mb_per_rank"]) == 2
    pipeline, single, beside = result["runs"][2], result["runs"][1], result["runs"][4]
    assert beside["processes"] == 2 and len(beside["peak_mem_mb_per_rank"]) == 2
    assert pipeline["scaling_efficiency"] == pytest.approx(pipeline["words_per_sec"] / (2 * single["words_per_sec"]),
                                                           abs=1e-3)
    assert pipeline["vs_side_by_side"] == pytest.approx(pipeline["words_per_sec"] / beside["words_per_sec"], abs=1e-3)
    assert result["matmul_tflops_per_sec"] > 0 and result["commit"]
    assert "| pipeline:2@1 | 1 |" in capsys.readouterr().out


def test_an_unknown_bench_mode_is_named():
    from dist_s2s.bench.run import Mode

    with pytest.raises(UserError, match="unknown bench mode 'pipeline'"):
        Mode.parse("pipeline", 2)
    for bad in ("single/wavefront", "pipeline:2/zigzag", "pipeline:2/1f1b+colocated"):
        with pytest.raises(UserError, match="unknown bench mode"):
            Mode.parse(bad, 2)
    assert Mode.parse("pipeline:2@1/wavefront+colocated", 2).label == "pipeline:2@1/wavefront+colocated"
    assert Mode.parse("pipeline:4", 2).threads == 1 and Mode.parse("single", 2).threads == 2
    assert Mode.parse("side-by-side:2", 2).threads == 1 and Mode.parse("side-by-side:2@1/bf16", 2).precision == "bf16"
    for bad in ("side-by-side", "side-by-side:2/wavefront"):
        with pytest.raises(UserError, match="unknown bench mode"):
            Mode.parse(bad, 2)


def test_one_f_one_b_orders_warm_up_forwards_then_alternates():
    assert one_f_one_b(0, 2, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert one_f_one_b(1, 2, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]


def test_the_simulated_bubble_of_balanced_stages_is_the_textbook_fraction():
    for stages, micro in [(2, 4), (4, 8), (8, 8)]:
        costs = StageCosts([1.0] * stages, [2.0] * stages, [0.0] * (stages - 1), 0.0)
        result = simulate(costs, micro, link_bytes_per_s=1e12, link_latency_s=0.0)
        assert result["bubble_fraction"] == pytest.approx((stages - 1) / (micro + stages - 1))
        assert result["step_s"] == pytest.approx(3.0 * (micro + stages - 1))


def test_a_slow_stage_or_link_sets_the_pace():
    costs = StageCosts([1.0, 3.0], [1.0, 3.0], [1e6], 0.0)
    fast = simulate(costs, 8, 1e12, 0.0)["step_s"]
    assert fast == pytest.approx(8 * 6.0 + 2.0, rel=0.01)  # stage 1's 6 s a micro-batch, plus the fill
    assert simulate(costs, 8, 1e6, 0.0)["step_s"] > fast  # one second a transfer


def test_a_timed_wavefront_step_never_waits_for_the_whole_device_with_messages_posted(prepared_tiny, tmp_path,
                                                                                       monkeypatch):
    """Recording a timeline (pipeline_simulator.py --timeline) times each instruction; on a GPU a device-wide
    synchronize there would wait for the step's posted receives (test_nccl_rules.py). The bench worker's own
    synchronizes, between steps, are logged on a CPU too, and the replay under NCCL's rules passes."""
    from conftest import assert_runs_under_nccl_rules

    from dist_s2s.bench.run import Mode, run_mode
    from dist_s2s.config import load_config

    monkeypatch.setenv("DIST_S2S_COMM_LOG", str(tmp_path / "comms"))
    config_path = str(REPO / "configs" / "tiny.yaml")
    config = load_config(config_path, [f"--data.out_dir={prepared_tiny.data.out_dir}"])
    ranks = run_mode(Mode.parse("pipeline:2@1/wavefront", cores=2), config_path,
                     overrides=[f"--data.out_dir={prepared_tiny.data.out_dir}"], batches=prepared_tiny.data.out_dir,
                     steps=2, warmup=1, config=config, record_timeline=True)
    assert all(rank["timeline"] and all(entry["compute_s"] >= 0 for entry in rank["timeline"]) for rank in ranks)
    logs = [path.read_text() for path in sorted((tmp_path / "comms").glob("comm-*.jsonl"))]
    assert len(logs) == 2 and all('"event": "synchronize"' in log for log in logs), "the replay sees them on a CPU"
    assert_runs_under_nccl_rules(tmp_path / "comms")


def test_every_device_synchronize_goes_through_the_one_the_communication_log_sees():
    """`dist_s2s.device.synchronize` is observed by the communication log (and so by the NCCL-rules replay); a
    direct `torch.cuda.synchronize` would be invisible to it."""
    direct = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "dist_s2s").rglob("*.py"))
              if path.name != "device.py"
              for number, line in enumerate(path.read_text().splitlines(), start=1)
              if "cuda.synchronize(" in line and not line.lstrip().startswith(("#", "-", '"'))]
    assert not direct, direct
