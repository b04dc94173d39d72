"""The benchmark's goals, in one place: the table (bench/report.py) and the chart (bench/chart.py) read them.

A ``RatioTarget`` is a speed ratio measured in one run: ``baseline`` seconds / ``tool`` seconds on the same
volume, the median of per-repetition ratios (runs of one repetition ran back to back), at least ``goal``.
Tool and baseline names are the row names of bench/run.py (``T_*``) as they appear in the results JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

ZSTACK_RBD = "zstack: deep cp + export|md5sum"
SHELL_RBD = "shell: export|tee(md5sum)|import"
QEMU_IMG_QCOW2 = "qemu-img convert -O qcow2 + md5sum"
QEMU_IMG_RAW = "qemu-img convert -O raw + md5sum"
CEILING_HASHLIB = "md5 ceiling (hashlib)"


@dataclass(frozen=True)
class RatioTarget:
    """``tool`` is at least ``goal`` times as fast as ``baseline`` on ``volume`` (a bench volume name)."""

    volume: str
    tool: str
    baseline: str
    goal: float
    why: str = ""

    @property
    def name(self) -> str:
        return f"{self.volume}: {self.tool} vs {self.baseline}"


# Issue 16's table (2 GiB volumes; the qcow2 chain has ~0.9 GiB allocated).
RATIO_TARGETS: tuple[RatioTarget, ...] = (
    RatioTarget("dense", "ours (copy)", ZSTACK_RBD, 2.0, "ZStack's own path: rbd deep cp, then export | md5sum"),
    RatioTarget("dense", "ours (copy)", SHELL_RBD, 1.6, "the careful shell pipeline"),
    RatioTarget("chain", "ours (-> qcow2 stream, md5 of the file)", QEMU_IMG_QCOW2, 1.25,
                "a qcow2 template, md5 of the file"),
    RatioTarget("chain", "ours (-> raw file)", QEMU_IMG_RAW, 1.5, "a raw template, md5 of the content"),
    RatioTarget("chain", "ours (qemu-img engine -> qcow2, md5 of the file)", QEMU_IMG_QCOW2, 1.0,
                "or drop the engine for uncompressed output"),
    RatioTarget("dense", "md5 ceiling (native)", CEILING_HASHLIB, 1.0, "native MD5 never slower than hashlib"),
)

# Limits that are not a ratio against a baseline (see report.targets for how each is measured).
LIMITS = {
    "dense_efficiency": 0.90,  # hashlib MD5 seconds of the bytes a run hashes / the run's seconds
    "peak_rss_mib": 300,  # peak RSS of one copy's process, MiB
    "concurrent_speedup": 1.7,  # 4 copies at once vs the same 4 one at a time
}

# The baseline each volume kind's tools are drawn against first (the path users run today).
MAIN_BASELINE = {"rbd": ZSTACK_RBD, "qcow2": QEMU_IMG_QCOW2}
