"""The benchmark as a picture: an SVG of each volume's tools as bars of speed relative to a baseline of the
same run, with the targets of bench/targets.py drawn as lines across the bars they apply to.

Plain SVG text written here (no plotting library): it is diffable, renders on GitHub and in any browser,
and `make bench` stays free of a heavy dependency.

One panel per (volume, baseline): every volume against the path users run today (``MAIN_BASELINE``), with
all its tools; then one panel per other baseline a target names, with only the tools those targets name.
A bar is ``baseline seconds / tool seconds``, the median of per-repetition ratios (``report.measured_ratio``,
the same number the table's targets use). Then, per volume a CPU target names (``CPU_TARGETS``), a panel of
the agent's CPU per GiB relative to the chosen MD5's (``report.cpu_ratio``; shorter is better, the target
line is an upper bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from report import cpu_ratio, measured_ratio
from targets import CPU_TARGETS, MAIN_BASELINE, QEMU_IMG_QCOW2, RATIO_TARGETS, RatioTarget, chosen_md5_ceiling

WIDTH_PX = 980
LABEL_PX = 330  # left column: tool names
PLOT_X0_PX = LABEL_PX + 10  # x of 0x
PLOT_WIDTH_PX = 500
ROW_PX = 22
BAR_PX = 13
PANEL_TITLE_PX = 34
PANEL_GAP_PX = 18
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"

COLOUR_OURS = "#2b6cb0"
COLOUR_OTHER = "#a0aec0"
COLOUR_NO_MD5 = "#e2e8f0"  # does less work than a copy with md5: ceilings, diagnostics, tools without md5
COLOUR_MET = "#2f855a"
COLOUR_NOT_MET = "#c53030"


@dataclass
class Bar:
    tool: str
    ratio: float
    targets: list[tuple[RatioTarget, bool]]  # (target, met)


@dataclass
class Panel:
    """bars relative to ``baseline``; ``cpu``: a CPU panel (bars are CPU ratios, targets are upper bounds)."""

    volume: str
    baseline: str
    bars: list[Bar]
    cpu: bool = False


def _does_less(tool: str) -> bool:
    return "ceiling" in tool or "no md5" in tool or "diagnostic" in tool


def panels(results: dict) -> list[Panel]:
    """The panels of the chart from a results document (bench/run.py's JSON: ``volumes`` and ``raw``)."""
    raw = results.get("raw")
    if not raw:
        raise ValueError("the results have no per-tool measurements ('raw'); a sweep run has no chart")
    out = []
    for volume, per_tool in raw.items():
        kind = results.get("volumes", {}).get(volume, {}).get("kind", "")
        main = MAIN_BASELINE.get(kind, QEMU_IMG_QCOW2)
        goals = [t for t in RATIO_TARGETS if t.volume == volume]
        others = [b for b in dict.fromkeys(t.baseline for t in goals) if b != main]
        for baseline in [main, *others]:
            if baseline not in per_tool:
                continue
            named = {t.tool for t in goals if t.baseline == baseline}
            bars = []
            for tool in per_tool:
                if tool == baseline or (baseline != main and tool not in named):
                    continue
                ratio = measured_ratio(raw, volume, tool, baseline)
                if ratio is None:
                    continue
                mine = [(t, ratio >= t.goal) for t in goals if t.tool == tool and t.baseline == baseline]
                bars.append(Bar(tool, ratio, mine))
            if bars:
                out.append(Panel(volume, baseline, bars))
    return out + cpu_panels(results)


def cpu_panels(results: dict) -> list[Panel]:
    """One panel per volume a CPU target names: the agent's CPU per GiB of our tools over the chosen MD5's."""
    raw = results["raw"]
    md5_tool = chosen_md5_ceiling(results.get("host", {}))
    out = []
    for volume in dict.fromkeys(t.volume for t in CPU_TARGETS):
        goals = [t for t in CPU_TARGETS if t.volume == volume]
        bars = []
        for tool in raw.get(volume, {}):
            ratio = cpu_ratio(raw, volume, tool, md5_tool) if tool.startswith("ours") else None
            if ratio is not None:
                bars.append(Bar(tool, ratio, [(t, ratio <= t.goal) for t in goals if t.tool == tool]))
        if bars:
            out.append(Panel(volume, f"{md5_tool.removeprefix('md5 ceiling ').strip('()')} MD5 CPU per GiB", bars,
                             cpu=True))
    return out


def _axis_max(values: list[float]) -> float:
    """The right end of the x axis: a half-unit step above every value."""
    return max(1.5, math.ceil(max(values) * 1.08 / 0.5) * 0.5)


def _times(ratio: float) -> str:
    """2.0 -> '2.0×', 1.25 -> '1.25×'."""
    return f"{ratio:.1f}×" if round(ratio, 1) == ratio else f"{ratio:.2f}×"


def _volume_caption(volume: str, facts: dict) -> str:
    if not facts:
        return volume
    gib = 1024 ** 3
    return (f"{volume} ({facts.get('kind', '?')}, {facts['size'] / gib:.1f} GiB, "
            f"{facts['allocated'] / gib:.2f} GiB allocated)")


def render_chart(results: dict, source: str = "") -> str:
    """SVG text of the chart of one results document; ``source`` (e.g. the JSON's file name) goes in the caption."""
    items = panels(results)
    axis_max = _axis_max([b.ratio for p in items for b in p.bars] + [t.goal for p in items for b in p.bars
                                                                       for t, _ in b.targets])
    px_per_x = PLOT_WIDTH_PX / axis_max

    def x_of(ratio: float) -> float:
        return PLOT_X0_PX + ratio * px_per_x

    body: list[str] = []
    panels_main = {}
    for panel in items:
        if not panel.cpu:
            panels_main.setdefault(panel.volume, panel.baseline)
    y = 88
    for panel in items:
        vol_facts = results.get("volumes", {}).get(panel.volume, {})
        body.append(f"<g class='panel' data-volume={quoteattr(panel.volume)} "
                    f"data-baseline={quoteattr(panel.baseline)}>")
        if panel.cpu:
            body.append(f"<text x='10' y='{y + 12}' font-size='12' fill='#4a5568'>{escape(panel.volume)}: the "
                        f"agent's CPU seconds per GiB relative to {escape(panel.baseline)} (= 1×; shorter is "
                        f"better, the OSD's CPU not included)</text>")
            y += PANEL_TITLE_PX - 14
        elif panel.baseline == panels_main.get(panel.volume):
            body.append(f"<text x='10' y='{y + 14}' font-size='14' font-weight='bold'>"
                        f"{escape(_volume_caption(panel.volume, vol_facts))}</text>")
            body.append(f"<text x='10' y='{y + 29}' font-size='12' fill='#4a5568'>speed relative to "
                        f"{escape(panel.baseline)} (= 1×)</text>")
            y += PANEL_TITLE_PX
        else:
            body.append(f"<text x='10' y='{y + 12}' font-size='12' fill='#4a5568'>{escape(panel.volume)}: "
                        f"speed relative to {escape(panel.baseline)} (= 1×)</text>")
            y += PANEL_TITLE_PX - 14
        rows_top = y
        rows_bottom = y + ROW_PX * len(panel.bars)
        step = 0.5 if axis_max <= 4 else 1.0
        body.append(f"<text x='{PLOT_X0_PX}' y='{rows_bottom + 13}' font-size='10' fill='#718096' "
                    f"text-anchor='middle'>0</text>")
        tick = step
        while tick <= axis_max + 1e-9:
            xt = x_of(tick)
            dash = " stroke-dasharray='5,3'" if abs(tick - 1.0) < 1e-9 else ""
            colour = "#4a5568" if dash else "#e2e8f0"
            cls = "baseline" if dash else "grid"
            body.append(f"<line class='{cls}' x1='{xt:.1f}' y1='{rows_top - 4}' x2='{xt:.1f}' y2='{rows_bottom}' "
                        f"stroke='{colour}' stroke-width='1'{dash}/>")
            body.append(f"<text x='{xt:.1f}' y='{rows_bottom + 13}' font-size='10' fill='#718096' "
                        f"text-anchor='middle'>{tick:g}×</text>")
            tick += step
        body.append(f"<line class='axis' x1='{PLOT_X0_PX}' y1='{rows_top - 4}' x2='{PLOT_X0_PX}' y2='{rows_bottom}' "
                    f"stroke='#2d3748' stroke-width='1'/>")
        for bar in panel.bars:
            mid = y + ROW_PX / 2
            colour = COLOUR_NO_MD5 if _does_less(bar.tool) else (
                COLOUR_OURS if bar.tool.startswith("ours") else COLOUR_OTHER)
            body.append(f"<text x='{LABEL_PX}' y='{mid + 4:.1f}' font-size='12' text-anchor='end'>"
                        f"{escape(bar.tool)}</text>")
            width = bar.ratio * px_per_x
            body.append(f"<rect class='bar' data-tool={quoteattr(bar.tool)} data-ratio='{bar.ratio:.4f}' "
                        f"x='{PLOT_X0_PX}' y='{mid - BAR_PX / 2:.1f}' width='{width:.2f}' height='{BAR_PX}' "
                        f"fill='{colour}' stroke='#a0aec0' stroke-width='{0.8 if colour == COLOUR_NO_MD5 else 0}'/>")
            label_x = x_of(max([bar.ratio] + [t.goal for t, _ in bar.targets])) + 8
            note = f"{bar.ratio:.2f}×"
            for goal, met in bar.targets:
                xg = x_of(goal.goal)
                stroke = COLOUR_MET if met else COLOUR_NOT_MET
                body.append(f"<line class='target' data-tool={quoteattr(goal.tool)} data-goal='{goal.goal}' "
                            f"x1='{xg:.2f}' y1='{mid - ROW_PX / 2 + 1:.1f}' "
                            f"x2='{xg:.2f}' y2='{mid + ROW_PX / 2 - 1:.1f}' "
                            f"stroke='{stroke}' stroke-width='3'/>")
                bound = "≤" if panel.cpu else "≥"
                note += f"   target {bound} {_times(goal.goal)}: {'met' if met else 'not met'}"
            fill = "#1a202c"
            if bar.targets:
                fill = COLOUR_MET if all(m for _, m in bar.targets) else COLOUR_NOT_MET
            # a white halo keeps the label readable where it crosses the 1x line or a grid line
            body.append(f"<text x='{label_x:.1f}' y='{mid + 4:.1f}' font-size='11' fill='{fill}' stroke='white' "
                        f"stroke-width='3' paint-order='stroke'>{escape(note)}</text>")
            y += ROW_PX
        y = rows_bottom + 16 + PANEL_GAP_PX
        body.append("</g>")

    host = results.get("host", {})
    title = "zsagent bench: speed relative to a baseline in the same run"
    sub = ("bar = baseline seconds / tool seconds (CPU panels: agent CPU / MD5 CPU), median of per-repetition "
           "ratios; line = target (bench/targets.py), green met, red not met")
    caption = ", ".join(x for x in (source, host.get("cpu_model", ""),
                                    f"{host['cores']} cores" if host.get("cores") else "") if x)
    legend = []
    lx = 10
    for colour, text in ((COLOUR_OURS, "ours"), (COLOUR_OTHER, "other tools"),
                         (COLOUR_NO_MD5, "does less work (md5 ceiling, no md5, diagnostic)")):
        legend.append(f"<rect x='{lx}' y='62' width='12' height='12' fill='{colour}' stroke='#a0aec0' "
                      f"stroke-width='{0.8 if colour == COLOUR_NO_MD5 else 0}'/>")
        legend.append(f"<text x='{lx + 17}' y='72' font-size='11'>{escape(text)}</text>")
        lx += 24 + 6.3 * len(text)
    for colour, text in ((COLOUR_MET, "target met"), (COLOUR_NOT_MET, "target not met")):
        legend.append(f"<line x1='{lx + 6}' y1='60' x2='{lx + 6}' y2='76' stroke='{colour}' stroke-width='3'/>")
        legend.append(f"<text x='{lx + 17}' y='72' font-size='11'>{escape(text)}</text>")
        lx += 24 + 6.3 * len(text)
    legend.append(f"<line x1='{lx + 6}' y1='60' x2='{lx + 6}' y2='76' stroke='#4a5568' stroke-dasharray='5,3'/>")
    legend.append(f"<text x='{lx + 17}' y='72' font-size='11'>the baseline (1×)</text>")
    height = y + 4
    head = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH_PX}' height='{height}' "
            f"viewBox='0 0 {WIDTH_PX} {height}' {FONT}>",
            f"<rect width='{WIDTH_PX}' height='{height}' fill='white'/>",
            f"<text x='10' y='22' font-size='16' font-weight='bold'>{escape(title)}</text>",
            f"<text x='10' y='40' font-size='11' fill='#4a5568'>{escape(sub)}</text>",
            f"<text x='10' y='55' font-size='11' fill='#4a5568'>{escape(caption)}</text>"]
    return "\n".join(head + legend + body + ["</svg>"]) + "\n"
