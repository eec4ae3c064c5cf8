"""A short Markdown report of a pipeline run: results, timings, and the pictures."""

from __future__ import annotations

from pathlib import Path

from worldmodels.config import STAGES
from worldmodels.utils.io import atomic_write_bytes, read_json


def write_report(paths) -> Path:
    root = paths.root
    config = read_json(root / "config.json", "run config")
    stages = (
        read_json(root / "stages.json", "stage record") if (root / "stages.json").exists() else {}
    )
    lines = [
        f"# World Models run: `{root.name}`",
        "",
        f"Preset: **{config.get('preset', 'custom')}**. Config: [config.json](config.json).",
        "",
    ]
    if paths.eval.exists():
        ev = read_json(paths.eval, "evaluation")
        lines += [
            "## Result",
            "",
            "| evaluation | episodes | seeds | mean +- std | min | max |",
            "|---|---|---|---|---|---|",
            f"| {ev['backend']} {ev.get('env_id', 'CarRacing-v3')} | {ev['episodes']} "
            f"| {ev['seeds'][0]}..{ev['seeds'][-1]} "
            f"| **{ev['mean']:.1f} +- {ev['std']:.1f}** | {min(ev['returns']):.1f} "
            f"| {max(ev['returns']):.1f} |",
            "",
        ]
    if stages:
        total = sum(s["seconds"] for s in stages.values())
        lines += ["## Stages", "", "| stage | wall time | summary |", "|---|---|---|"]
        lines += [
            f"| {name} | {'>= ' if stages[name].get('time_partial') else ''}"
            f"{stages[name]['seconds'] / 60:.1f} min | {stages[name]['summary']} |"
            for name in STAGES
            if name in stages
        ]
        lines += [f"| **total** | **{total / 60:.1f} min** | |", ""]
    pictures = [
        (
            "Controller training (best / mean / worst per generation, mean-eval)",
            "controller",
            ("curve.png",),
        ),
        ("C's refinement (refine.time_budget_s)", "refine", ("curve.png",)),
        (
            "C in the real game (left) and in M's dream, decoded by V (right)",
            "controller",
            ("dream_vs_real.png", "dream_vs_real.gif"),
        ),
        ("V: real frames (top) and reconstructions (bottom)", "vae", ("recon.png", "recon.gif")),
        ("M: real frames beside M's predictions and dreams", "mdrnn", ("**/*.png", "**/*.gif")),
    ]
    for title, folder, patterns in pictures:
        found = sorted({p for pat in patterns for p in (root / folder).glob(pat)})
        if found:
            lines += [f"## {title}", ""]
            lines += [f"![{p.name}]({p.relative_to(root)})" for p in found]
            lines += [""]
    atomic_write_bytes(paths.report, "\n".join(lines).encode())
    return paths.report
