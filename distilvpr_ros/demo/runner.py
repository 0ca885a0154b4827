"""``distilvpr demo``: run (or resume) the stages of :data:`~.stages.STAGES` in order, then the report."""

from __future__ import annotations

import time
from pathlib import Path

from .report import fmt, write_demo_report
from .settings import load_demo_settings
from .stage import Demo
from .stages import STAGES


def _banner(index: int, total: int, name: str, what: str) -> None:
    print(f"\n[demo] ===== {index}/{total} {name}: {what} =====", flush=True)


def run_demo(quick: bool = False, results_root: Path = Path("results"), data_root: Path = Path("data"),
             config: str | Path | None = None, fresh: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the chained demo; returns the report folder (``<results_root>/demo/<timestamp>``)."""
    started = time.perf_counter()
    name = "quick" if quick else "default"
    settings = load_demo_settings(config, name)
    demo = Demo(name, settings, Path(data_root), Path(results_root) / "demo" / f"work_{name}", progress, fresh)
    demo.work.mkdir(parents=True, exist_ok=True)
    total = len(STAGES) + 1
    for index, stage in enumerate(STAGES, 1):
        _banner(index, total, stage.name, stage.what)
        demo.run_stage(stage)
    _banner(total, total, "report", "write the report")
    out = write_demo_report(demo, Path(results_root), time.perf_counter() - started)
    print(console_summary(demo))
    print(f"\n[demo] report: {out / 'report.md'}  ({time.perf_counter() - started:.0f} s)")
    return out


def console_summary(demo: Demo) -> str:
    """A few lines of the headline numbers for the terminal."""
    r = demo.results
    ev = r["evaluate"]
    lines = [f"\n[demo] offline {ev['region']} region: teacher R@1 {fmt(ev['teacher']['recall@1'])}, "
             f"student R@1 {fmt(ev['student']['recall@1'])}"]
    loc = r["localize"]
    if "skipped" not in loc:
        lines.append(f"[demo] localization node on {Path(loc['bag']).name}: R@1 {fmt(loc['recall@1'])}, PR AUC "
                     f"{fmt(loc['pr_auc'])}, max F1 {fmt(loc['max_f1'])}, latency p50/p99 "
                     f"{fmt(loc['latency_ms_p50'], '.1f')}/{fmt(loc['latency_ms_p99'], '.1f')} ms")
    c = r["corridor"]
    lines.append(f"[demo] Corridor: R@1 {fmt(c['recall@1'])}, rank {c['rank']}" if "skipped" not in c
                 else f"[demo] Corridor: skipped ({c['skipped']})")
    return "\n".join(lines)
