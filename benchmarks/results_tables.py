"""Regenerate the tables of recorded figures from the committed JSON files under benchmarks/results/.

    .venv/bin/python benchmarks/results_tables.py

Rewrites README.md's results table (between the results markers), and in docs/benchmarks.md the table of
every bench run (bench-table markers) and the 8-GPU projection's sensitivity table (projection markers), and
docs/evaluation.md's table of the Multi30k configs' BLEU (bleu-table markers) and the news job's (news-table).
Every figure comes from a file that records its commit and
resolved config; a row whose file is missing says so instead of keeping an old number.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def run_of(result: dict, label: str) -> dict:
    return next(r for r in result["runs"] if r["label"] == label)


def bench_table() -> str:
    lines = ["| config | device | mode | threads/rank | micro-batches | words/s | × plain | MFU | peak MB | commit |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for path in sorted(RESULTS.glob("bench-*.json")):
        result = json.loads(path.read_text())
        config = Path(result["config"]).stem
        device = f"{result['device']} ({result['cores']} cores)" if result["device_type"] == "cpu" else result["device"]
        for run in result["runs"]:
            ratio = f"{run['vs_plain']:.2f}×" if run.get("vs_plain") else "–"
            flag = " ⚠ oversubscribed" if run["oversubscribed"] else ""
            lines.append(f"| {config} | {device} | {run['label']}{flag} | {run['threads_per_rank']} | "
                         f"{run['micro_batches']} | {run['words_per_sec']:,.0f} | {ratio} | {100 * run['mfu']:.1f}% | "
                         f"{run['peak_mem_mb']:,.0f} | {result['commit']} |")
    return "\n".join(lines)


SENSITIVITY_NAMES = {"gemm_flops": "large-GEMM rate", "lstm_flops": "LSTM step rate",
                     "memory_bytes": "memory bandwidth", "link_bytes": "link bandwidth",
                     "launch_s": "launch latency", "message_s": "message latency"}


def projection_table() -> str:
    """The paper's model, without and with attention, one row a halved or doubled constant."""
    plain, attention = load("projection-h100-paper.json"), load("projection-h100-paper-attention.json")
    lines = ["| constant | × | one GPU | 1F1B M=4 | 1F1B M=8 | wavefront | wavefront ÷ one GPU | with attention: "
             "one GPU | wavefront | ÷ |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, with_attention in zip(plain["sensitivity"], attention["sensitivity"]):
        assert (row["constant"], row["factor"]) == (with_attention["constant"], with_attention["factor"])
        stated = row["constant"] == "(as stated)"
        bold = "**" if stated else ""
        wave, ratio = f"{bold}{row['wavefront']:,.0f}{bold}", f"{bold}{row['wavefront'] / row['one_gpu']:.2f}×{bold}"
        lines.append(f"| {SENSITIVITY_NAMES.get(row['constant'], row['constant'])} | {row['factor']:g} | "
                     f"{row['one_gpu']:,.0f} | {row['1f1b_m4']:,.0f} | {row['1f1b_m8']:,.0f} | {wave} | {ratio} | "
                     f"{with_attention['one_gpu']:,.0f} | {with_attention['wavefront']:,.0f} | "
                     f"{with_attention['wavefront'] / with_attention['one_gpu']:.2f}× |")
    lines.append(f"\nFrom `projection-h100-paper.json` (commit {plain['commit']}) and "
                 f"`projection-h100-paper-attention.json` (commit {attention['commit']}).")
    return "\n".join(lines)


BLEU_ROWS = [
    ("bleu-multi30k.json", "`multi30k-paper.yaml`", "the paper's recipe: SGD 0.7, fp32, no dropout, 7.5 epochs, α 0"),
    ("bleu-multi30k-main-sgd.json", "`multi30k.yaml` before Adam", "SGD 0.7, dropout 0.2, bf16, 12 epochs, α 0.6"),
    ("bleu-multi30k-main.json", "`multi30k.yaml` (the main job)", "Adam 0.002, dropout 0.2, bf16, 12 epochs, α 0.6"),
    ("bleu-multi30k-attention.json", "`multi30k-attention.yaml`", "the main job + Luong attention"),
]


def _minutes(seconds: float | None) -> str:
    """2159.8 → 36 min 00 s (rounded to the second first: never "35 min 60 s")."""
    if not seconds:
        return ""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s"


def bleu_table() -> str:
    """Beam 12, test splits decoded once after the choices made on valid; a missing file says so."""
    lines = ["| config | recipe | valid ppl | valid BLEU | test2016 BLEU / chrF | test2017 BLEU / chrF | end to end | "
             "commit |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, config, recipe in BLEU_ROWS:
        if not (RESULTS / name).is_file():
            lines.append(f"| {config} | {recipe} | `{name}` missing | | | | | |")
            continue
        result = load(name)
        split = chosen_by_split(result)
        valid = split.get("valid", {})
        cells = [f"{split[s]['bleu']:.2f} / {split[s]['chrf']:.2f}" for s in ("test2016", "test2017")]
        ppl = f"{valid['perplexity']:.2f}" if valid.get("perplexity") else ""
        lines.append(f"| {config} | {recipe} | {ppl} | {valid.get('bleu', '')} | "
                     f"{cells[0]} | {cells[1]} | {_minutes(result.get('end_to_end', {}).get('wall_s'))} | "
                     f"{result['commit']} |")
    return "\n".join(lines)


def chosen_by_split(result: dict) -> dict[str, dict]:
    """A BLEU file's evaluation of each split at the settings chosen on valid: beam 12, the config's length
    penalty (or none recorded)."""
    length_penalty = result["resolved_config"]["eval"]["length_penalty"]
    return {r["split"]: r for r in result["results"] if r.get("beam") == 12
            and r.get("chosen_on", "valid") == "valid" and r.get("length_penalty") in (None, length_penalty)}


def _bleu(name: str, label: str, config: str, recipe: str) -> str:
    tests = chosen_by_split(load(name))
    t16, t17 = tests["test2016"], tests["test2017"]
    return (f"| {label} (`{config}`: {recipe}), test2016 / test2017 | BLEU {t16['bleu']:.2f} / "
            f"{t17['bleu']:.2f}, chrF {t16['chrf']:.2f} / {t17['chrf']:.2f} | [evaluation](docs/evaluation.md), "
            f"`{name}` |")


def _one_device_vs_plain() -> list[str]:
    paper_recipe = load("bench-cpu-multi30k.json")
    single, plain = run_of(paper_recipe, "single@2"), run_of(paper_recipe, "plain@2")
    paper = load("bench-cpu-paper.json")
    singles, plains = ([r for r in paper["runs"] if r["mode"] == mode] for mode in ("single", "plain"))
    ratios = [s["words_per_sec"] / p["words_per_sec"] for s, p in zip(singles, plains)]
    return [f"| one device vs plain PyTorch, 2 threads, the Multi30k model (paper recipe) | "
            f"{single['words_per_sec'] / plain['words_per_sec']:.2f}× words/s ({single['words_per_sec']:,.0f} vs "
            f"{plain['words_per_sec']:,.0f}) | [benchmarks](docs/benchmarks.md), `bench-cpu-multi30k.json` |",
            f"| one device vs plain PyTorch, the paper's model (384M parameters) | {mean(ratios):.2f}× (mean of "
            f"{len(ratios)} interleaved pairs) | `bench-cpu-paper.json` |"]


def _pipelines() -> list[str]:
    paper_recipe, main = load("bench-cpu-multi30k.json"), load("bench-cpu-multi30k-main.json")
    wave_p, wave_m = run_of(paper_recipe, "pipeline:2@1/wavefront+colocated"), run_of(main, "pipeline:2@1")
    one_f = run_of(paper_recipe, "pipeline:2@1/1f1b")
    return [f"| 2 pipeline stages vs 2 × one thread, the wavefront (default), paper recipe / main job | scaling "
            f"efficiency {wave_p['scaling_efficiency']:.2f} / {wave_m['scaling_efficiency']:.2f} "
            f"({wave_p['vs_side_by_side']:.2f} / {wave_m['vs_side_by_side']:.2f} of two single-device processes "
            f"side by side; target 0.85 not met) | [benchmarks](docs/benchmarks.md), `bench-cpu-multi30k.json`, "
            f"`bench-cpu-multi30k-main.json` |",
            f"| the same under DeepSpeed's 1F1B, {one_f['micro_batches']} micro-batches, paper recipe | "
            f"{one_f['scaling_efficiency']:.2f} | `bench-cpu-multi30k.json` |"]


def _bf16_and_projection() -> list[str]:
    bf16 = load("bench-cpu-multi30k-bf16.json")
    ratio = run_of(bf16, "single@2/bf16")["words_per_sec"] / run_of(bf16, "single@2")["words_per_sec"]
    projection = load("projection-h100-paper.json")
    stated = projection["sensitivity"][0]
    return [f"| bf16 vs fp32 on an Intel CPU with AMX, the Multi30k model, one device | {ratio:.2f}× words/s | "
            f"[training](docs/training.md), `bench-cpu-multi30k-bf16.json` |",
            f"| 8 GPUs in the paper's layout vs one (H100 cost model) | wavefront "
            f"{stated['wavefront'] / stated['one_gpu']:.1f}×, 1F1B {stated['1f1b_m4'] / stated['one_gpu']:.1f}× "
            f"(paper: 3.7×) | a projection, [benchmarks](docs/benchmarks.md), `projection-h100-paper.json` |"]


def _news() -> list[str]:
    """The news job's row: newstest2013 at the settings chosen on newstest2012, and its time end to end."""
    if not (RESULTS / "bleu-news.json").is_file():
        return ["| news job (`news.yaml`) | `bleu-news.json` missing | |"]
    result = load("bleu-news.json")
    test = chosen_by_split(result)["newstest2013"]
    return [f"| news job (`news.yaml`: Europarl sample + WMT news 2008–2011 + Tatoeba, the main job's recipe, "
            f"16k words, 4 epochs), newstest2013 | BLEU {test['bleu']:.2f}, chrF {test['chrf']:.2f}; prepare + train "
            f"+ evaluate {_minutes(result['end_to_end']['wall_s'])} | [evaluation](docs/evaluation.md#news), "
            f"`bleu-news.json` |"]


def news_table() -> str:
    """docs/evaluation.md's news table: each split's BLEU / chrF, then BLEU by source length on newstest2013."""
    if not (RESULTS / "bleu-news.json").is_file():
        return "`bleu-news.json` missing"
    result = load("bleu-news.json")
    splits = chosen_by_split(result)
    lines = ["| split | sentences/s | BLEU | chrF | perplexity | hyp/ref length |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("valid", "newstest2013"):
        r = splits[name]
        lines.append(f"| {name} | {r['sentences_per_sec']:.1f} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
                     f"{r['perplexity']:.2f} | {r['length_ratio']:.3f} |")
    bins = [b for b in splits["newstest2013"]["bleu_by_length"] if b["sentences"]]
    lines += ["", "| newstest2013, source words | " + " | ".join(
        f"{int(b['low']) + 1}–{int(b['high'])}" if b["high"] != float("inf") else f"> {int(b['low'])}" for b in bins)
        + " |", "|---|" + "---:|" * len(bins),
        "| sentences | " + " | ".join(str(b["sentences"]) for b in bins) + " |",
        "| BLEU | " + " | ".join(f"{b['bleu']:.2f}" for b in bins) + " |"]
    return "\n".join(lines)


def prepare_scale_table() -> str:
    """docs/data.md: prepare at 1M, 4M and 12M WMT-shaped pairs, every run of prepare-scale.json."""
    if not (RESULTS / "prepare-scale.json").is_file():
        return "`prepare-scale.json` missing"
    lines = ["| pairs | Ray CPUs | time | pairs/s | peak PSS (RSS), MB | driver | workers | shards | work dir "
             "(peak) | word types en / fr | commit |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    notes: list[str] = []
    for run in sorted(load("prepare-scale.json")["runs"], key=lambda r: (r["ray_cpus"], r["pairs"])):
        roles = run["role_peak_pss_mb"]
        types = run["word_types"]
        cells = [f"{run['pairs']:,}", str(run["ray_cpus"]), _minutes(run["seconds"]), f"{run['pairs_per_sec']:,}",
                 f"{run['peak_pss_mb']:,} ({run['peak_rss_mb']:,})", f"{roles['driver']:,}", f"{roles['workers']:,}",
                 f"{run['disk_shards_mb']:,} MB", f"{run['disk_work_peak_mb']:,} MB",
                 f"{types.get('en', 0):,} / {types.get('fr', 0):,}", run["commit"]]
        if run.get("note"):
            notes.append(run["note"])
            cells[-1] += f" <sup>{len(notes)}</sup>"
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *(f"<sup>{i}</sup> {note}." for i, note in enumerate(notes, 1))]
    before = {run["pairs"]: run for run in load("prepare-scale.json").get("before_encode_fix", [])}
    if {1_000_000, 12_000_000} <= before.keys():
        small, large = before[1_000_000], before[12_000_000]
        workers = small["role_peak_pss_mb"]["workers"], large["role_peak_pss_mb"]["workers"]
        lines += ["", f"Before the encode pass held a slice at a time (commits {small['commit']}, {large['commit']}): "
                      f"peak PSS {small['peak_pss_mb']:,} MB at 1M and {large['peak_pss_mb']:,} MB at 12M pairs "
                      f"({large['peak_pss_mb'] / small['peak_pss_mb']:.2f}×; workers {workers[0]:,} → {workers[1]:,} "
                      f"MB), {_minutes(large['seconds'])} for 12M."]
    return "\n".join(lines)


def wmt14_projection() -> str:
    """docs/data.md: what preparing all of WMT'14 (36M pairs) asks of a 16-core node, from the runs here.

    Time: Amdahl's law with the serial share read off the 1- and 2-CPU runs at 1M pairs (T2 / T1 = s + (1 - s)
    / 2), scaled linearly in pairs (the 1M → 12M rows check it) at this machine's per-core speed. Memory: a
    worker's share of the 2-CPU peak for each of 16 workers, the driver's growth from 1M to 12M extended to
    36M, Ray's daemons as measured. Disk: shards, work directory and input, linear in pairs."""
    runs = load("prepare-scale.json")["runs"]
    alone = {(run["ray_cpus"], run["pairs"]): run for run in runs if not run.get("note")}  # times: nothing beside
    every = {(run["ray_cpus"], run["pairs"]): run for run in runs}  # memory and disk stand either way
    if not ({(1, 1_000_000), (2, 1_000_000)} <= alone.keys() and (2, 12_000_000) in every):
        return "the 1-CPU and 2-CPU runs at 1M pairs and the 2-CPU run at 12M are needed in `prepare-scale.json`"
    one, two, large = alone[(1, 1_000_000)], alone[(2, 1_000_000)], every[(2, 12_000_000)]
    measured = 2 * two["seconds"] / one["seconds"] - 1  # Amdahl: T2 / T1 = s + (1 - s) / 2
    serial = max(0.0, min(1.0, measured))
    high = max(serial, 0.05)  # a share too small to see on 2 CPUs can still show on 16: bound it at 5%
    seen = "within the noise" if measured <= 0.01 else f"{100 * serial:.0f}%"
    scale = 36_000_000 / 1_000_000
    seconds, slowest = (one["seconds"] * scale * (share + (1 - share) / 16) for share in (serial, high))
    per_worker = two["role_peak_pss_mb"]["workers"] / 2
    driver_growth = (large["role_peak_pss_mb"]["driver"] - two["role_peak_pss_mb"]["driver"]) / 11
    driver = large["role_peak_pss_mb"]["driver"] + driver_growth * 24
    daemons = sum(v for k, v in large["role_peak_pss_mb"].items() if k not in ("driver", "workers"))
    memory_gb = (16 * per_worker + driver + daemons) / 1024
    disk = {key: large[key] * 3 / 1024 for key in ("disk_shards_mb", "disk_work_peak_mb", "input_mb")}
    return "\n".join([
        "| 36M pairs (all of WMT'14 en–fr), 16 Ray CPUs | projected from the runs above |",
        "|---|---|",
        f"| time | {seconds / 60:.0f}–{slowest / 60:.0f} min ({one['pairs_per_sec']:,} pairs/s on 1 CPU, "
        f"{two['pairs_per_sec']:,} on 2, {two['pairs_per_sec'] / one['pairs_per_sec']:.2f}×: the driver's serial share "
        f"(scanning the inputs, merging the word counts) is {seen} here; the range is {100 * serial:.0f}% to "
        f"{100 * high:.0f}% of it, 16 CPUs running "
        f"{1 / (serial + (1 - serial) / 16):.1f}× to {1 / (high + (1 - high) / 16):.1f}× one) |",
        f"| memory | {memory_gb:.1f} GB ({per_worker:,.0f} MB a worker × 16, the driver {driver:,.0f} MB with "
        f"36M pairs' word types, Ray's daemons {daemons:,} MB) |",
        f"| disk | shards {disk['disk_shards_mb']:.1f} GB, the work directory {disk['disk_work_peak_mb']:.1f} GB "
        f"at its peak (deleted at the end), the raw text {disk['input_mb']:.1f} GB, and the archives |",
    ])


def loader_scale_table() -> str:
    """docs/data.md: the loader on the 12M-pair shards, the latest run of loader-scale.json."""
    if not (RESULTS / "loader-scale.json").is_file():
        return "`loader-scale.json` missing: run benchmarks/loader_scale.py"
    run = load("loader-scale.json")["runs"][-1]
    lines = [f"{run['rows']:,} training rows, {run['batches_per_epoch']:,} batches of 128 an epoch; the cursor at "
             f"epoch 3, batch {run['cursor']['next_batch']:,} (commit {run['commit']}).", "",
             "| step | time | RSS | USS |", "|---|---:|---:|---:|"]
    for label, step in run["steps"].items():
        if "seconds" in step:
            lines.append(f"| {label}{' (' + format(step['batches'], ',') + ' batches)' if 'batches' in step else ''} | "
                         f"{step['seconds']:.3f} s | {step['rss_mb']:,} MB | {step['uss_mb']:,} MB |")
    verdict = "equal" if run["resumed_equals_uninterrupted"] else "NOT equal"
    lines += ["", f"The {run['compared_batches']} batches after the resumed cursor are {verdict} to those of the "
                  "loader that walked there."]
    return "\n".join(lines)


def paper_steps_table() -> str:
    """docs/data.md: the paper's model for 20 steps from the 12M-pair shards, one device against the pipeline."""
    if not (RESULTS / "paper-steps-12m.json").is_file():
        return "`paper-steps-12m.json` missing: run benchmarks/paper_steps.py"
    run = load("paper-steps-12m.json")["runs"][-1]
    one, pipe = run["one_device"], run["pipeline"]

    def per_rank(record: dict) -> str:
        return ", ".join(f"{rank}: {mb:,}" for rank, mb in sorted(record["peak_pss_mb_per_rank"].items(),
                                                                  key=lambda item: int(item[0])))

    lines = [f"{run['parameters']:,} parameters, {run['steps']} steps (commit {run['commit']}, {run['cores']} cores, "
             f"{run['memory_gb']} GB).", "",
             "| | time | peak PSS, all ranks | per rank (PSS, MB) |", "|---|---:|---:|---|",
             f"| one device | {_minutes(one['seconds'])} | {one['peak_pss_mb_sum']:,} MB | |"]
    for failed in run.get("did_not_fit", []):
        lines.append(f"| {failed['stages']} stages: killed for memory after {_minutes(failed['seconds'])} | – | "
                     f"{failed['peak_pss_mb_sum']:,} MB (lowest free: {failed['machine_available_low_mb']:,} MB) | "
                     f"{per_rank(failed)} |")
    launcher = f"`deepspeed --num_gpus {run['stages']}`, gloo"
    lines += [f"| {run['stages']} stages ({launcher}) | {_minutes(pipe['seconds'])} | {pipe['peak_pss_mb_sum']:,} MB | "
              f"{per_rank(pipe)} |", "",
              f"At step {run['steps']} the largest weight difference is "
              f"{run['largest_weight_difference_at_last_step']:.2e}, the largest relative loss difference over the "
              f"steps {run['largest_relative_loss_difference']:.2e}; validation perplexity "
              f"{run['valid_ppl']['single']:.2f} on one device, {run['valid_ppl']['pipeline']:.2f} in the pipeline."]
    return "\n".join(lines)


def download_scale_table() -> str:
    """docs/data.md: `download` of a multi-GB archive in LIUM's layout, cut off halfway and run again."""
    if not (RESULTS / "download-scale.json").is_file():
        return "`download-scale.json` missing: run benchmarks/download_scale.py"
    run = load("download-scale.json")["runs"][-1]
    first, second = run["first_run"], run["second_run"]
    output = sum(run["output_bytes"].values())
    verdict = "equal" if all(run["sha256_equal"].values()) else "NOT equal"
    return "\n".join([
        f"`bitexts.tgz` of {run['pairs']:,} pairs, {run['archive_bytes'] / 2**30:.2f} GiB, served from 127.0.0.1 with "
        f"the connection cut after byte {run['cut_at_byte']:,} (commit {run['commit']}):", "",
        "| run | exit | time | peak RSS | what it left |", "|---|---:|---:|---:|---|",
        f"| cut off halfway | {first['code']} | {first['seconds']:.0f} s | {first['peak_rss_mb']} MB | "
        f"`bitexts.tgz.part` of {first['partial_bytes']:,} bytes, no `train.*` file; its last line: "
        f"\"{first['error'][:160]}…\" |",
        f"| the same command again | {second['code']} | {second['seconds']:.0f} s | {second['peak_rss_mb']} MB | "
        f"`wmt14_selected/train.{{en,fr}}`, {output / 2**30:.2f} GiB, sha256 {verdict} to the corpus served; "
        f"{second['progress_lines']} progress line{'s' if second['progress_lines'] != 1 else ''}; no `.part` left |",
    ])


def averaging_table() -> str:
    """docs/evaluation.md: the main job's last checkpoints averaged, against the last and the best."""
    if not (RESULTS / "averaging-main.json").is_file():
        return "`averaging-main.json` missing: run benchmarks/averaging_main.py"
    result = load("averaging-main.json")
    lines = ["| checkpoint | valid BLEU | valid ppl | test2016 BLEU | test2016 chrF | test2016 ppl |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, scores in result["candidates"].items():
        valid, test = scores["valid"], scores["test2016"]
        lines.append(f"| {label} | {valid['bleu']:.2f} | {valid['perplexity']:.2f} | {test['bleu']:.2f} | "
                     f"{test['chrf']:.2f} | {test['perplexity']:.2f} |")
    lines += ["", f"Chosen on valid BLEU: {result['chosen_on_valid']} (commit {result['commit']}; training "
                  f"{_minutes(result['train_seconds'])}; the best by valid perplexity was step "
                  f"{(result.get('best') or {}).get('step')})."]
    return "\n".join(lines)


def serve_load_table() -> str:
    """docs/serving.md: the server under 1, 8 and 32 clients against `translate` in the same run."""
    if not (RESULTS / "serve-load.json").is_file():
        return "`serve-load.json` missing: run benchmarks/serve_load.py"
    result = load("serve-load.json")
    overrides = " ".join(result.get("overrides") or []) or "none"
    lines = [f"`translate` in one process: {result['translate_sentences_per_sec']:.1f} sentences/s "
             f"({result['split']}, beam {result['beam']}, α {result['length_penalty']}, commit {result['commit']}; "
             f"overrides: {overrides})."]
    if "translate_before_after" in result:
        before, after = result["translate_before_after"]
        ceiling = result["batches_of_clients"]
        lines[-1] += (f" It is the mean of {before:.1f} before the loads and {after:.1f} after them: the machine's "
                      f"speed drifts. The same search on batches of {ceiling['clients']} sentences in the split's "
                      f"order, the most {ceiling['clients']} one-sentence clients can be given: "
                      f"{ceiling['sentences_per_sec']:.1f} sentences/s (measured first).")
    lines.append("")
    if result.get("warmup"):
        warmup = result["warmup"]
        lines += [f"First an unrecorded warm-up load of {warmup['clients']} clients: server RSS "
                  f"{warmup['rss_before_mb']:,} → {warmup['rss_after_mb']:,} MB.", ""]
    header = ("| clients | sentences/s | × translate | p50 latency | p99 latency | errors | mean batch | "
              "server RSS before → after |")
    lines += [header, "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["loads"]:
        lines.append(f"| {row['clients']} | {row['sentences_per_sec']:.1f} | {row['vs_translate']:.2f} | "
                     f"{row['p50_ms']:,} ms | {row['p99_ms']:,} ms | {row['errors']} | {row.get('mean_batch', '–')} | "
                     f"{row['rss_before_mb']:,} → {row['rss_after_mb']:,} MB |")
    batching = result["batching"]
    lines += ["", f"Over the whole run the server decoded {batching['sentences']:,} sentences in "
                  f"{batching['batches']:,} batches (mean {batching['mean_batch']}, "
                  f"largest {batching['largest_batch']})."]
    if (RESULTS / "serve-load-documents.json").is_file():
        documents = load("serve-load-documents.json")
        row, (before, after) = documents["loads"][-1], documents["translate_before_after"]
        lines += ["", f"Documents (`serve-load-documents.json`, commit {documents['commit']}): {row['clients']} "
                      f"clients sending {documents['sentences_per_request']} sentences a request: "
                      f"{row['sentences_per_sec']:.1f} sentences/s, {row['vs_translate']:.2f} × `translate` "
                      f"({before:.1f} before, {after:.1f} after), batches of {row['mean_batch']} on average, "
                      f"p50 {row['p50_ms']:,} ms a request, {row['errors']} errors, server RSS "
                      f"{row['rss_before_mb']:,} → {row['rss_after_mb']:,} MB."]
    return "\n".join(lines)


def decoding_speed_table() -> str:
    """docs/evaluation.md: OpenNMT-py's `onmt_translate` against dist-s2s's search (fp32 and bf16), the search before
    and a plain one at beam 12, then dist-s2s at every beam and batch size."""
    if not (RESULTS / "translate-cpu-main.json").is_file():
        return "`translate-cpu-main.json` missing: run benchmarks/translate_throughput.py"
    ours = load("translate-cpu-main.json")
    peer = load("opennmt-peer.json") if (RESULTS / "opennmt-peer.json").is_file() else None
    sentences = ours["runs"][0]["sentences"]
    lines = ["| beam 12 | α | a batch | sentences/s | target words/s | × OpenNMT-py | same best as dist-s2s fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for alpha in sorted({r["length_penalty"] for r in ours["runs"]}):
        onmt = None
        if peer is not None:
            name = "no length penalty" if alpha == 0 else "length penalty wu α 0.6"
            times = sorted(r["seconds"] for r in peer["runs"] if r["decoding"] == name)
            if times:
                onmt = sentences / times[len(times) // 2]
                lines.append(f"| OpenNMT-py 3.5.1 `onmt_translate` (median of {len(times)}) | {alpha:.1f} | "
                             f"{peer['batch_size']} | {onmt:.1f} | – | 1.00× | – |")
        for run in ours["runs"]:
            if run["length_penalty"] != alpha or run["beam"] != 12:
                continue
            ratio = f"{run['sentences_per_sec'] / onmt:.2f}×" if onmt else "–"
            same = "–" if run["same_best_as_dist_s2s"] is None else f"{run['same_best_as_dist_s2s']} of {sentences}"
            lines.append(f"| {run['search']} | {alpha:.1f} | {run['batch']} | {run['sentences_per_sec']:.1f} | "
                         f"{run['target_words_per_sec']:,.0f} | {ratio} | {same} |")
    beams = sorted({r["beam"] for r in ours["runs"]})
    batches = sorted({r["batch"] for r in ours["runs"] if r["search"] == "dist-s2s"})
    ours_names = [name for name in dict.fromkeys(r["search"] for r in ours["runs"]) if name.startswith("dist-s2s")]
    lines += ["", "Sentences/s (target words/s) at every beam, α 0:", "",
              "| beam | search | " + " | ".join(f"{b} a batch" for b in batches) + " |",
              "|---:|---|" + "---:|" * len(batches)]
    for beam in beams:
        for name in [*ours_names, "plain PyTorch", "before (tests/beam_before.py)"]:
            cells = []
            for size in batches:
                run = next((r for r in ours["runs"] if (r["search"], r["beam"], r["batch"], r["length_penalty"])
                            == (name, beam, size, 0.0)), None)
                cells.append("–" if run is None else
                             f"{run['sentences_per_sec']:.1f} ({run['target_words_per_sec']:,.0f})")
            if any(cell != "–" for cell in cells):
                lines.append(f"| {beam} | {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Commit {ours['commit']}, {ours['date']}, {ours['split']} ({sentences} sentences), "
                 f"{ours['threads']} threads, nothing else running; OpenNMT-py's model: "
                 + ("missing (run benchmarks/opennmt_peer.py)" if peer is None else
                    f"{peer['model']['layers']} × {peer['model']['hidden_size']} LSTM, "
                    f"{peer['model']['word_vec_size']}-d embeddings, {peer['model']['training_steps']} training steps, "
                    f"measured {peer['date']}") + ".")
    return "\n".join(lines)


def _prepare_scale() -> list[str]:
    """prepare from 1M to 12M WMT-shaped pairs at 2 Ray CPUs: the speed, and the memory 12M takes against 1M."""
    if not (RESULTS / "prepare-scale.json").is_file():
        return ["| `prepare` at WMT'14's size | `prepare-scale.json` missing | |"]
    runs = {run["pairs"]: run for run in load("prepare-scale.json")["runs"] if run["ray_cpus"] == 2}
    if not {1_000_000, 12_000_000} <= runs.keys():
        return ["| `prepare` at WMT'14's size | 1M and 12M rows missing from `prepare-scale.json` | |"]
    small, large = runs[1_000_000], runs[12_000_000]
    growth = large["peak_pss_mb"] / small["peak_pss_mb"]
    speed = (f"{large['pairs_per_sec']:,} pairs/s, {_minutes(large['seconds'])}" if not large.get("note") else
             f"{_minutes(large['seconds'])} with other work beside it ({small['pairs_per_sec']:,} pairs/s at 1M alone)")
    return [f"| `prepare`, 12M WMT-shaped pairs (the paper's 160k / 80k words), 2 Ray CPUs | "
            f"{speed}; peak memory {growth:.2f}× the 1M figure ({large['peak_pss_mb']:,} vs {small['peak_pss_mb']:,} "
            f"MB) | [data](docs/data.md), `prepare-scale.json` |"]


def _paper_steps() -> list[str]:
    """README: the paper's model from the 12M-pair shards, the pipeline against one device."""
    if not (RESULTS / "paper-steps-12m.json").is_file():
        return ["| the paper's model on 12M pairs | `paper-steps-12m.json` missing | |"]
    run = load("paper-steps-12m.json")["runs"][-1]
    unfit = "".join(f"; {f['stages']} ranks need more than this machine's {run['memory_gb']} GB "
                    f"({f['peak_pss_mb_sum'] / 1024:.1f} GB reached)" for f in run.get("did_not_fit", []))
    return [f"| the paper's model ({run['parameters'] / 1e6:.0f}M parameters) from the 12M-pair shards, "
            f"{run['steps']} steps, {run['stages']}-stage pipeline (gloo) vs one device | largest weight difference "
            f"{run['largest_weight_difference_at_last_step']:.1e}, valid ppl {run['valid_ppl']['pipeline']:.2f} vs "
            f"{run['valid_ppl']['single']:.2f}{unfit} | [data](docs/data.md), `paper-steps-12m.json` |"]


def decoding_baselines_table() -> str:
    """docs/evaluation.md: dist-s2s (fp32) against the plain-PyTorch search and the search before, every beam
    and batch size, one run."""
    if not (RESULTS / "translate-cpu-main-baselines.json").is_file():
        return "`translate-cpu-main-baselines.json` missing: run benchmarks/translate_throughput.py --baseline-batches"
    result = load("translate-cpu-main-baselines.json")
    batches = sorted({r["batch"] for r in result["runs"]})
    lines = ["| beam | search | " + " | ".join(f"{b} a batch" for b in batches) + " |",
             "|---:|---|" + "---:|" * len(batches)]
    for beam in sorted({r["beam"] for r in result["runs"]}):
        for name in dict.fromkeys(r["search"] for r in result["runs"]):
            cells = [next((f"{r['sentences_per_sec']:.1f}" for r in result["runs"]
                           if (r["search"], r["beam"], r["batch"]) == (name, beam, size)), "–") for size in batches]
            lines.append(f"| {beam} | {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Sentences/s, fp32, α 0, test2016; commit {result['commit']}, {result['date']}."]
    return "\n".join(lines)


def _decoding_speed() -> list[str]:
    """README: beam 12 / 64 a batch against OpenNMT-py's onmt_translate, measured in one sitting."""
    if not (RESULTS / "translate-cpu-main.json").is_file() or not (RESULTS / "opennmt-peer.json").is_file():
        return ["| beam search vs OpenNMT-py | `translate-cpu-main.json` or `opennmt-peer.json` missing | |"]
    ours, peer = load("translate-cpu-main.json"), load("opennmt-peer.json")
    sentences, cells = ours["runs"][0]["sentences"], []
    for alpha, name in ((0.0, "no length penalty"), (0.6, "length penalty wu α 0.6")):
        times = sorted(r["seconds"] for r in peer["runs"] if r["decoding"] == name)
        onmt = sentences / times[len(times) // 2]
        for search in ("dist-s2s, bf16", "dist-s2s"):
            run = next(r for r in ours["runs"] if (r["search"], r["beam"], r["batch"], r["length_penalty"])
                       == (search, 12, 64, alpha))
            cells.append(f"{run['sentences_per_sec'] / onmt:.2f}×")
    return [f"| beam search, beam 12, 64 a batch, test2016, vs OpenNMT-py's `onmt_translate` (same sizes, same "
            f"sitting), α 0 / 0.6 | bf16 {cells[0]} / {cells[2]}, fp32 {cells[1]} / {cells[3]} | "
            f"[evaluation](docs/evaluation.md#decoding-speed), `translate-cpu-main.json` |"]


def _reproduction() -> str:
    """README: the verdicts of the study with models that train, once study/report.py has written its snapshot."""
    snapshot = REPO / "docs" / "reproduction" / "trained" / "snapshot.json"
    first = "at 1,849 SGD updates (BLEU 0.1–7): 5 reproduced, 2 not"
    if not snapshot.is_file():
        return (f"| reproduction of the paper's 7 claims | {first}; rerun with models that train: running | "
                "[docs/REPRODUCTION.md](docs/REPRODUCTION.md) |")
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("study_report", REPO / "study" / "report.py")
    report = sys.modules["study_report"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    runs = report.StudyRuns(json.loads(snapshot.read_text()))
    verdicts = [v.verdict for v in report.tables(runs)[1]]
    if not verdicts:
        plan = yaml.safe_load((REPO / "configs" / "experiments" / "trained" / "study.yaml").read_text())
        planned = len(plan["rows"]) + len(plan["ensemble_seeds"]) + len(plan["long_sentences"]["rows"])
        counted = len(set(runs.trained) - set(runs.superseded()))
        return (f"| reproduction of the paper's 7 claims | {first}; rerun with models that train: running, "
                f"{counted} of {planned} trainings done | [docs/REPRODUCTION.md](docs/REPRODUCTION.md) |")
    counts = ", ".join(f"{verdicts.count(kind)} {kind}" for kind in (report.REPRODUCED, report.DIRECTION,
                                                                    report.NOT_REPRODUCED) if verdicts.count(kind))
    mixed = len(verdicts) - sum(verdicts.count(k) for k in (report.REPRODUCED, report.DIRECTION, report.NOT_REPRODUCED))
    return (f"| reproduction of the paper's 7 claims, models that train | {counts}"
            + (f", {mixed} in part" if mixed else "") + f" (first study {first}) | "
            "[docs/REPRODUCTION.md](docs/REPRODUCTION.md) |")


def results_table() -> str:
    rows = ["| what | figure | from |", "|---|---|---|",
            _bleu("bleu-multi30k-main.json", "main job", "multi30k.yaml",
                  "the paper's model; Adam, dropout 0.2, bf16, 12 epochs, beam 12, α 0.6"),
            _bleu("bleu-multi30k-attention.json", "with attention", "multi30k-attention.yaml",
                  "the main job + Luong attention"),
            _bleu("bleu-multi30k.json", "the paper's recipe", "multi30k-paper.yaml",  # multi30k.yaml when it ran
                  "fp32, no dropout, 7.5 epochs, beam 12"),
            *_news(), *_decoding_speed(), *_prepare_scale(), *_paper_steps(), *_one_device_vs_plain(), *_pipelines(),
            *_bf16_and_projection(),
            _reproduction()]
    return "\n".join(rows)


def rewrite(path: Path, start: str, end: str, table: str) -> None:
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} … {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def main() -> None:
    rewrite(REPO / "docs" / "benchmarks.md", "<!-- bench-table:start -->", "<!-- bench-table:end -->", bench_table())
    rewrite(REPO / "docs" / "benchmarks.md", "<!-- projection:start -->", "<!-- projection:end -->",
            projection_table())
    rewrite(REPO / "docs" / "evaluation.md", "<!-- bleu-table:start -->", "<!-- bleu-table:end -->", bleu_table())
    rewrite(REPO / "docs" / "evaluation.md", "<!-- news-table:start -->", "<!-- news-table:end -->", news_table())
    rewrite(REPO / "docs" / "data.md", "<!-- prepare-scale:start -->", "<!-- prepare-scale:end -->",
            prepare_scale_table())
    rewrite(REPO / "docs" / "data.md", "<!-- wmt14-projection:start -->", "<!-- wmt14-projection:end -->",
            wmt14_projection())
    rewrite(REPO / "docs" / "data.md", "<!-- loader-scale:start -->", "<!-- loader-scale:end -->", loader_scale_table())
    rewrite(REPO / "docs" / "data.md", "<!-- paper-steps:start -->", "<!-- paper-steps:end -->", paper_steps_table())
    rewrite(REPO / "docs" / "data.md", "<!-- download-scale:start -->", "<!-- download-scale:end -->",
            download_scale_table())
    rewrite(REPO / "docs" / "evaluation.md", "<!-- averaging:start -->", "<!-- averaging:end -->", averaging_table())
    rewrite(REPO / "docs" / "evaluation.md", "<!-- decoding-speed:start -->", "<!-- decoding-speed:end -->",
            decoding_speed_table())
    rewrite(REPO / "docs" / "evaluation.md", "<!-- decoding-baselines:start -->", "<!-- decoding-baselines:end -->",
            decoding_baselines_table())
    rewrite(REPO / "docs" / "serving.md", "<!-- serve-load:start -->", "<!-- serve-load:end -->", serve_load_table())
    rewrite(REPO / "README.md", "<!-- results:start -->", "<!-- results:end -->", results_table())


if __name__ == "__main__":
    main()
