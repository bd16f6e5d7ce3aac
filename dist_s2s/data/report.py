"""Human-readable summary of a manifest: what went in, what came out, what was filtered."""

from __future__ import annotations

from dist_s2s.data.manifest import Manifest


def summary(manifest: Manifest, out_dir: str) -> str:
    lines = [f"prepared {out_dir}: vocab {manifest.vocab.src_size} source / "
             f"{manifest.vocab.tgt_size} target words, {len(manifest.shards)} shards"]
    for split, stats in manifest.splits.items():
        dropped = ", ".join(f"{reason} {count}" for reason, count in manifest.filtered[split].items()) or "none"
        unk = stats["src_unk"] / max(1, stats["src_words"]), stats["tgt_unk"] / max(1, stats["tgt_words"])
        lines.append(f"  {split:<16} {stats['rows_in']:>9} in  {stats['rows']:>9} kept  filtered: {dropped}  "
                     f"words {stats['src_words']}+{stats['tgt_words']}  unk {unk[0]:.2%}/{unk[1]:.2%}")
    if manifest.normalized:
        lines.append("  normalized: " + ", ".join(f"{k} {v}" for k, v in manifest.normalized.items()))
    return "\n".join(lines)
