"""bench/chart.py: the SVG has one bar per tool, as long as its speed ratio, and one line per target."""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import chart  # noqa: E402
import report  # noqa: E402
import targets  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
GiB = 1024**3

OURS_RBD = "ours (copy)"
OURS_RAW = "ours (-> raw file)"
OURS_QCOW2 = "ours (-> qcow2 stream, md5 of the file)"


def _runs(*seconds: float) -> list[dict]:
    return [{"seconds": s} for s in seconds]


# Two repetitions; per-repetition ratios are chosen equal so the median is plain to see.
RESULTS = {
    "host": {"cpu_model": "test CPU", "cores": 2},
    "volumes": {"dense": {"kind": "rbd", "size": 2 * GiB, "allocated": 2 * GiB},
                "chain": {"kind": "qcow2", "size": 2 * GiB, "allocated": GiB}},
    "raw": {
        "dense": {OURS_RBD: _runs(5.0, 6.0), targets.ZSTACK_RBD: _runs(10.0, 12.0),
                  targets.SHELL_RBD: _runs(8.0, 9.6)},
        "chain": {OURS_RAW: _runs(4.0, 4.0), OURS_QCOW2: _runs(1.0, 1.0), targets.QEMU_IMG_QCOW2: _runs(2.0, 2.0),
                  targets.QEMU_IMG_RAW: _runs(6.0, 6.0)},
    },
}


def _panels(svg: str) -> dict[tuple[str, str], ET.Element]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return {(g.get("data-volume"), g.get("data-baseline")): g
            for g in root.iter(f"{SVG}g") if g.get("class") == "panel"}


def _of(panel: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in panel.iter(f"{SVG}{tag}") if e.get("class") == cls]


def test_one_bar_per_tool_as_long_as_its_ratio_and_one_line_per_target():
    panels = _panels(chart.render_chart(RESULTS, source="sample.json"))
    expected = {
        ("dense", targets.ZSTACK_RBD): {OURS_RBD: 2.0, targets.SHELL_RBD: 1.25},
        ("dense", targets.SHELL_RBD): {OURS_RBD: 1.6},
        ("chain", targets.QEMU_IMG_QCOW2): {OURS_RAW: 0.5, OURS_QCOW2: 2.0, targets.QEMU_IMG_RAW: 1 / 3},
        ("chain", targets.QEMU_IMG_RAW): {OURS_RAW: 1.5},
    }
    assert set(panels) == set(expected)
    lines_seen = 0
    for key, ratios in expected.items():
        panel = panels[key]
        bars = _of(panel, "rect", "bar")
        assert sorted(b.get("data-tool") for b in bars) == sorted(ratios)
        (axis,) = _of(panel, "line", "axis")
        (one,) = _of(panel, "line", "baseline")
        x0, unit_px = float(axis.get("x1")), float(one.get("x1")) - float(axis.get("x1"))
        assert unit_px > 0
        for bar in bars:
            assert float(bar.get("x")) == pytest.approx(x0)
            assert float(bar.get("width")) / unit_px == pytest.approx(ratios[bar.get("data-tool")], rel=1e-3)
        goals = [t for t in targets.RATIO_TARGETS if (t.volume, t.baseline) == key and t.tool in ratios]
        lines = _of(panel, "line", "target")
        assert sorted((ln.get("data-tool"), float(ln.get("data-goal"))) for ln in lines) == sorted(
            (t.tool, t.goal) for t in goals)
        for line in lines:
            assert (float(line.get("x1")) - x0) / unit_px == pytest.approx(float(line.get("data-goal")), rel=1e-3)
        lines_seen += len(lines)
    # every target whose tool and baseline were measured is drawn once (not the qemu-img engine's, not MD5's)
    measured = [t for t in targets.RATIO_TARGETS if t.tool in RESULTS["raw"].get(t.volume, {})
                and t.baseline in RESULTS["raw"][t.volume]]
    assert lines_seen == len(measured) == 4


def test_the_table_reads_the_same_targets_and_ratios():
    items = {i["target"]: i for i in report.targets([], None, RESULTS["volumes"], RESULTS["raw"])}
    for goal in targets.RATIO_TARGETS:
        assert goal.name in items
    zstack = items[targets.RATIO_TARGETS[0].name]
    assert zstack["value"] == pytest.approx(2.0) and zstack["met"]
    qcow2 = next(i for name, i in items.items() if name.startswith(f"chain: {OURS_QCOW2}"))
    assert qcow2["value"] == pytest.approx(2.0) and qcow2["met"]
    assert items[f"chain: {OURS_RAW} vs {targets.QEMU_IMG_RAW}"]["met"] is True
    assert items[f"dense: md5 ceiling (native) vs {targets.CEILING_HASHLIB}"]["value"] is None


def test_a_sweep_document_has_no_chart():
    with pytest.raises(ValueError, match="sweep"):
        chart.render_chart({"host": {}, "sweep": {}})


def test_targets_name_tools_that_run_py_measures():
    tree = ast.parse((BENCH / "run.py").read_text())
    names = {node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
             and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
             and any(isinstance(t, ast.Name) and t.id.startswith("T_") for t in node.targets)}
    for goal in targets.RATIO_TARGETS:
        assert goal.tool in names and goal.baseline in names, goal


def _cpu_results(copy_cpu_s: list[float], hash_cpu_s: list[float]) -> dict:
    """Dense copies with the agent's CPU of each copy window and the chosen (native) MD5's CPU, 2 GiB each."""
    copies = [{"seconds": 5.0, "size": 2 * GiB, "copy_cpu_s": c, "hwm_kib": 1024,
               "bytes_read": 2 * GiB} for c in copy_cpu_s]
    ceilings = [{"seconds": 3.0, "bytes": 2 * GiB, "hash_cpu_s": h} for h in hash_cpu_s]
    hashlib_ceilings = [{"seconds": 4.0, "bytes": 2 * GiB, "hash_cpu_s": 99.0} for _ in hash_cpu_s]
    return {"host": {"cpu_model": "test CPU", "cores": 2, "native_md5": {"choice": "native(avx512)"}},
            "volumes": {"dense": {"kind": "rbd", "size": 2 * GiB, "allocated": 2 * GiB}},
            "raw": {"dense": {OURS_RBD: copies, targets.ZSTACK_RBD: _runs(10.0, 10.0),
                              targets.CEILING_NATIVE: ceilings, targets.CEILING_HASHLIB: hashlib_ceilings}}}


@pytest.mark.parametrize(("copy_cpu_s", "expected", "met"), [([4.2, 4.4], 1.4, True), ([5.6, 5.8], 1.9, False)])
def test_the_agents_cpu_per_gib_is_drawn_against_the_chosen_md5s_with_its_upper_bound(copy_cpu_s, expected, met):
    results = _cpu_results(copy_cpu_s, [3.0, 2.75])
    ratios = sorted(c / h for c, h in zip(copy_cpu_s, [3.0, 2.75], strict=True))
    assert sum(ratios) / 2 == pytest.approx(expected, abs=0.2)
    panels = _panels(chart.render_chart(results))
    (cpu_key,) = [k for k in panels if "MD5 CPU" in k[1]]
    assert cpu_key[0] == "dense" and "native" in cpu_key[1]  # the chosen implementation, not hashlib
    panel = panels[cpu_key]
    (bar,) = _of(panel, "rect", "bar")
    (axis,) = _of(panel, "line", "axis")
    (one,) = _of(panel, "line", "baseline")
    unit_px = float(one.get("x1")) - float(axis.get("x1"))
    assert float(bar.get("width")) / unit_px == pytest.approx(sum(ratios) / 2, rel=1e-3)
    (line,) = _of(panel, "line", "target")
    assert float(line.get("data-goal")) == 1.5
    assert line.get("stroke") == (chart.COLOUR_MET if met else chart.COLOUR_NOT_MET)
    rows = report.build_rows(results["volumes"], results["raw"], targets.chosen_md5_ceiling(results["host"]))
    items = {i["target"]: i for i in report.targets(rows, None, results["volumes"], results["raw"])}
    (cpu_item,) = [i for name, i in items.items() if "agent CPU per GiB" in name]
    assert cpu_item["value"] == pytest.approx(sum(ratios) / 2) and cpu_item["met"] is met
    (row,) = [r for r in rows if r["tool"] == OURS_RBD]
    assert row["agent_cpu_s_per_gib"] == pytest.approx(sum(copy_cpu_s) / 2 / 2)
    assert "xMD5cpu" in report.render(rows, None)


def test_results_without_cpu_figures_have_no_cpu_panel_and_the_target_is_not_measured():
    results = _cpu_results([4.0], [3.0])
    del results["raw"]["dense"][OURS_RBD][0]["copy_cpu_s"]
    assert not [k for k in _panels(chart.render_chart(results)) if "MD5 CPU" in k[1]]
    items = report.targets([], None, results["volumes"], results["raw"])
    (cpu_item,) = [i for i in items if "agent CPU per GiB" in i["target"]]
    assert cpu_item["value"] is None and cpu_item["met"] is False


@pytest.mark.parametrize(("agent_cpu_ratio", "rss_mib", "stall_share", "met"), [
    (1.02, 400.0, 0.05, [True, True, True]),
    (1.30, 700.0, 0.40, [False, False, False]),
])
def test_the_concurrency_targets_are_cpu_per_gib_rss_and_stalls(agent_cpu_ratio, rss_mib, stall_share, met):
    concurrent = {"agent_cpu_ratio": agent_cpu_ratio, "peak_rss_mib": rss_mib, "stall_share": stall_share,
                  "speedup": 1.0}
    items = [i for i in report.targets([], concurrent, {}, {}) if i["target"].startswith("4 concurrent")]
    assert [i["met"] for i in items] == met
    assert not any("aggregate vs one at a time" in i["target"] for i in items)  # the wall-time speedup is gone
