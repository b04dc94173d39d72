"""Turns the raw measurements into the table and the JSON document; from a results JSON again:

    python bench/report.py RESULTS.json                   the table and the targets
    python bench/report.py --chart RESULTS.json OUT.svg   the chart (bench/chart.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import GiB, MiB, Summary
from targets import (
    CEILING_HASHLIB,
    CPU_TARGETS,
    LIMITS,
    QEMU_IMG_QCOW2,
    QEMU_IMG_RAW,
    RATIO_TARGETS,
    SHELL_RBD,
    ZSTACK_RBD,
    chosen_md5_ceiling,
)


def paired_ratio(numerators: list[float], denominators: list[float]) -> float | None:
    """Median of per-repetition ratios (runs of the same repetition ran back to back)."""
    pairs = [a / b for a, b in zip(numerators, denominators, strict=False) if a and b]
    return statistics.median(pairs) if pairs else None


def measured_ratio(raw: dict, volume: str, tool: str, baseline: str) -> float | None:
    """How many times faster ``tool`` ran than ``baseline`` on ``volume``: median of per-repetition ratios of
    their seconds. ``raw[volume][tool]`` is the list of run dicts (``seconds``), one per repetition."""
    runs = raw.get(volume, {})
    if tool not in runs or baseline not in runs:
        return None
    return paired_ratio([r["seconds"] for r in runs[baseline]], [r["seconds"] for r in runs[tool]])


def cpu_ratio(raw: dict, volume: str, tool: str, md5_tool: str, hashed_bytes: int | None = None) -> float | None:
    """The agent's CPU seconds per hashed byte running ``tool`` on ``volume`` over the MD5's CPU seconds per
    byte in the ``md5_tool`` ceiling run of the same repetition; median of the per-repetition ratios. Runs
    without the figures (``copy_cpu_s``, ``hash_cpu_s``: results from before they were measured) give None."""
    runs = raw.get(volume, {})
    if tool not in runs or md5_tool not in runs:
        return None
    ratios = []
    for run, md5 in zip(runs[tool], runs[md5_tool], strict=False):
        hashed = hashed_bytes or run.get("size")
        if run.get("copy_cpu_s") and md5.get("hash_cpu_s") and hashed and md5.get("bytes"):
            ratios.append((run["copy_cpu_s"] / hashed) / (md5["hash_cpu_s"] / md5["bytes"]))
    return statistics.median(ratios) if ratios else None


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


ZSTACK_FILE = QEMU_IMG_QCOW2
RAW_FILE = QEMU_IMG_RAW
NBDCOPY = ("nbdcopy (no md5)", "nbdcopy read -> null: (no md5, no write)")


def hashed_bytes(tool: str, size: int, runs: list[dict]) -> int:
    """Bytes one run of ``tool`` puts through MD5: the content (virtual size), or for a qcow2 output only the
    stored file's bytes (the service skips the content md5 when no destination is raw)."""
    if "qcow2" in tool:
        return runs[0].get("actual_size") or size
    return size


def build_rows(volumes: dict, results: dict, md5_tool: str = CEILING_HASHLIB) -> list[dict]:
    """One row per (volume, tool). ``results[volume][tool]`` is a list of worker/tool dicts, one per rep;
    ``md5_tool``: the MD5 ceiling row of the implementation the agent chose (targets.chosen_md5_ceiling)."""
    rows = []
    for name, vol in volumes.items():
        per_tool = results.get(name, {})
        for tool, runs in per_tool.items():
            seconds = [r["seconds"] for r in runs]
            summary = Summary.of(seconds)
            row = {
                "volume": name, "tool": tool, "seconds": summary.as_dict(),
                "mib_s": vol["size"] / summary.median / MiB,
                "cpu_s": statistics.median(r.get("client_cpu_s", 0) + r.get("osd_cpu_s", 0) for r in runs),
                "osd_cpu_s": statistics.median(r.get("osd_cpu_s", 0) for r in runs),
            }
            hash_cpu = [r["hash_cpu_s"] / (r["bytes"] / GiB) for r in runs if r.get("hash_cpu_s") and r.get("bytes")]
            if hash_cpu:
                row["hash_cpu_s_per_gib"] = statistics.median(hash_cpu)
            if tool.startswith("ours"):
                hashed = hashed_bytes(tool, vol["size"], runs)
                row["hashed_bytes"] = hashed
                copy_cpu = [r["copy_cpu_s"] for r in runs if r.get("copy_cpu_s")]
                row["agent_cpu_s_per_gib"] = statistics.median(copy_cpu) / (vol["size"] / GiB) if copy_cpu else None
                row["cpu_vs_md5"] = cpu_ratio(results, name, tool, md5_tool, hashed)
                row["md5_tool"] = md5_tool
                per_thread = [r["threads_cpu_s"] for r in runs if r.get("threads_cpu_s")]
                if per_thread:
                    names = dict.fromkeys(n for threads in per_thread for n in threads)
                    row["threads_cpu_s_per_gib"] = {
                        n: statistics.median(t.get(n, 0.0) for t in per_thread) / (vol["size"] / GiB) for n in names}
                row["peak_rss_mib"] = max(r["hwm_kib"] for r in runs) / 1024
                row["bytes_read"] = runs[0].get("bytes_read")
                row["allocated"] = vol["allocated"]
                if vol["kind"] == "rbd":
                    main, second = ZSTACK_RBD, SHELL_RBD
                else:
                    main, second = ZSTACK_FILE, (None if "qcow2" in tool else RAW_FILE)
                speed = {}
                for label, base in (("main", main), ("second", second)) + tuple(("nbdcopy", n) for n in NBDCOPY):
                    if base in per_tool:
                        speed[label] = paired_ratio([r["seconds"] for r in per_tool[base]], seconds)
                        speed[f"{label}_tool"] = base
                row["speedup"] = speed
            rows.append(row)
    return rows


def render(rows: list[dict], concurrent: dict | None) -> str:
    header = (f"{'volume':8} {'tool':49} {'time s: med [min-max]':22} {'MiB/s':>6} {'CPU s':>9}  "
              f"{'x ZStack':>8} {'x 2nd':>6} {'x nbdcp':>7} {'xMD5cpu':>7} {'RSS':>4}  read/alloc MiB")
    lines = [header, "-" * len(header)]
    for row in rows:
        s = row["seconds"]
        time_col = f"{s['median']:6.2f} [{s['min']:.2f}-{s['max']:.2f}]" if s["n"] > 1 else f"{s['median']:6.2f} (once)"
        cpu_col = f"{row['cpu_s']:5.1f}" + (f"/{row['osd_cpu_s']:.0f}" if row["osd_cpu_s"] >= 0.5 else "  ")
        extra = ""
        if row["tool"].startswith("ours"):
            sp = row["speedup"]
            extra = (f"{fmt_ratio(sp.get('main')):>8} {fmt_ratio(sp.get('second')):>6} "
                     f"{fmt_ratio(sp.get('nbdcopy')):>7} "
                     f"{fmt_ratio(row.get('cpu_vs_md5')):>7} {row['peak_rss_mib']:4.0f}  "
                     f"{row['bytes_read'] / MiB:.0f}/{row['allocated'] / MiB:.0f}")
        lines.append(f"{row['volume']:8} {row['tool']:49} {time_col:22} {row['mib_s']:6.0f} {cpu_col:>9}  {extra}")
    for row in rows:
        if row.get("threads_cpu_s_per_gib") and row.get("agent_cpu_s_per_gib"):
            md5 = [r for r in rows if r["volume"] == row["volume"] and r["tool"] == row.get("md5_tool")]
            split = ", ".join(f"{name} {cpu_s:.2f}" for name, cpu_s in row["threads_cpu_s_per_gib"].items())
            lines.append(f"  {row['volume']} {row['tool']}: agent CPU {row['agent_cpu_s_per_gib']:.2f} s/GiB = {split}"
                         + (f" (MD5 alone: {md5[0]['hash_cpu_s_per_gib']:.2f})" if md5 and
                            md5[0].get("hash_cpu_s_per_gib") else ""))
    lines.append("")
    lines.append("CPU s: median CPU seconds of the processes a run started plus the OSD's (/OSD part); x ZStack: "
                 "vs rbd deep cp + export|md5sum (RBD) or qemu-img convert -O qcow2 + md5sum (file); x 2nd: vs the "
                 "shell pipeline (RBD) or qemu-img convert -O raw + md5sum (raw outputs); x nbdcp: vs nbdcopy "
                 "(no md5); all speedups are medians of per-repetition ratios; xMD5cpu: the agent's CPU seconds per "
                 "GiB hashed (its process, all threads, the copy's timed window; the OSD's CPU not included) / the "
                 "chosen MD5's CPU seconds per GiB (ceiling run of the same repetition); RSS: peak MiB of the "
                 "copy's process.")
    if concurrent:
        lines.append("")
        lines.append(
            f"4 concurrent copies ({', '.join(concurrent['volumes'])}; one process, a thread each): "
            f"{concurrent['together_s']:.1f} s vs {concurrent['sequential_s']:.1f} s one at a time = "
            f"{concurrent['aggregate_mib_s']:.0f} vs {concurrent['sequential_mib_s']:.0f} MiB/s -> "
            f"{concurrent['speedup']:.2f}x; CPU {concurrent['cpu_s_together']:.0f} s vs "
            f"{concurrent['cpu_s_one_at_a_time']:.0f} s (ours + OSD), i.e. "
            f"{concurrent['cpu_s_together'] / concurrent['together_s']:.2f} of {os.cpu_count()} cores busy "
            f"while together; peak RSS {concurrent['peak_rss_mib']:.0f} MiB for all four")
        if concurrent.get("agent_cpu_ratio") is not None:
            lines.append(
                f"  agent CPU together / one at a time: {concurrent['agent_cpu_ratio']:.2f} "
                f"({concurrent['agent_cpu_s_per_gib_together']:.2f} vs "
                f"{concurrent['agent_cpu_s_per_gib_one_at_a_time']:.2f} CPU-s per GiB); longest stall of a job: "
                f"{concurrent['longest_stall_s']:.1f} s = {concurrent['stall_share']:.2f} of the run")
    return "\n".join(lines)


def targets(rows: list[dict], concurrent: dict | None, volumes: dict, raw: dict) -> list[dict]:
    """The goals (bench/targets.py), each with the measured number and met/not met; ``raw`` as in build_rows."""
    out = []
    for goal in RATIO_TARGETS:
        value = measured_ratio(raw, goal.volume, goal.tool, goal.baseline)
        out.append({"target": goal.name, "goal": goal.goal, "value": value,
                    "met": value is not None and value >= goal.goal})
    md5_tool = next((r["md5_tool"] for r in rows if r.get("md5_tool")), CEILING_HASHLIB)
    for goal in CPU_TARGETS:
        value = cpu_ratio(raw, goal.volume, goal.tool, md5_tool)
        out.append({"target": f"{goal.name} {md5_tool.removeprefix('md5 ceiling ')}", "goal": f"<= {goal.goal}",
                    "value": value, "met": value is not None and value <= goal.goal})
    sparse_ok = []
    for row in rows:
        if row["tool"].startswith("ours") and row.get("bytes_read") is not None:
            sparse_ok.append(row["bytes_read"] <= volumes[row["volume"]]["allocated"])
    out.append({"target": "sparse: read only allocated data", "goal": "bytes_read <= allocated",
                "value": all(sparse_ok), "met": all(sparse_ok)})
    for label, pick in (("copy modes", lambda t: "flatten" not in t), ("flatten mode", lambda t: "flatten" in t)):
        values = [r["peak_rss_mib"] for r in rows if r["tool"].startswith("ours") and pick(r["tool"])]
        if values:
            rss = max(values)
            out.append({"target": f"peak RSS per copy, {label} (MiB)", "goal": f"< {LIMITS['peak_rss_mib']}",
                        "value": rss, "met": rss < LIMITS["peak_rss_mib"]})
    if concurrent and concurrent.get("agent_cpu_ratio") is not None:
        value = concurrent["agent_cpu_ratio"]
        out.append({"target": "4 concurrent copies: agent CPU per GiB vs one at a time",
                    "goal": f"<= {LIMITS['concurrent_cpu_ratio']}", "value": value,
                    "met": value <= LIMITS["concurrent_cpu_ratio"]})
        out.append({"target": "4 concurrent copies: peak RSS of the process (MiB)",
                    "goal": f"< {LIMITS['concurrent_peak_rss_mib']}", "value": concurrent["peak_rss_mib"],
                    "met": concurrent["peak_rss_mib"] < LIMITS["concurrent_peak_rss_mib"]})
        out.append({"target": "4 concurrent copies: longest stall of a job / the run's time (no starvation)",
                    "goal": f"<= {LIMITS['concurrent_stall_share']}", "value": concurrent["stall_share"],
                    "met": concurrent["stall_share"] <= LIMITS["concurrent_stall_share"]})
    return out


def render_targets(items: list[dict]) -> str:
    lines = ["targets:"]
    for item in items:
        value = item["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else ("not measured" if value is None else str(value))
        lines.append(f"  [{'met' if item['met'] else 'NOT met'}] {item['target']}: {shown} (goal {item['goal']})")
    return "\n".join(lines)


def write_json(directory: Path, document: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def write_chart(json_path: Path, svg_path: Path | None = None) -> Path:
    """Render the chart of the results at ``json_path`` to ``svg_path`` (default: beside it, .svg)."""
    from chart import render_chart

    svg_path = svg_path or json_path.with_suffix(".svg")
    svg_path.write_text(render_chart(json.loads(json_path.read_text()), source=json_path.name))
    return svg_path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="the table and targets, or the chart, of a bench results JSON")
    p.add_argument("--chart", action="store_true", help="write the SVG chart instead of printing the table")
    p.add_argument("results", type=Path, help="bench/results/<timestamp>.json")
    p.add_argument("out", type=Path, nargs="?", help="with --chart: the SVG to write (default: beside the JSON)")
    args = p.parse_args(argv)
    if args.chart:
        print(write_chart(args.results, args.out))
        return 0
    document = json.loads(args.results.read_text())
    if "rows" not in document:
        print(f"{args.results}: no table (a sweep run?)", file=sys.stderr)
        return 1
    rows = document["rows"]
    if document.get("raw"):  # rebuilt, so that a results file shows every figure the current report knows
        rows = build_rows(document["volumes"], document["raw"], chosen_md5_ceiling(document.get("host", {})))
    print(render(rows, document.get("concurrent")))
    print()
    print(render_targets(targets(rows, document.get("concurrent"), document["volumes"], document.get("raw", {}))))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
