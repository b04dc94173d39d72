"""The benchmark's goals, in one place: the table (bench/report.py) and the chart (bench/chart.py) read them.

A ``RatioTarget`` is a speed ratio measured in one run: ``baseline`` seconds / ``tool`` seconds on the same
volume, the median of per-repetition ratios (runs of one repetition ran back to back), at least ``goal``.
Tool and baseline names are the row names of bench/run.py (``T_*``) as they appear in the results JSON.

A ``CpuTarget`` is a CPU ratio measured in one run: the agent's CPU seconds per GiB for ``tool`` (its
process, every thread, over the copy's timed window: ``copy_cpu_s`` of bench/worker.py) against the CPU
seconds per GiB of the MD5 implementation the agent chose on this host (the hashing thread of the MD5
ceiling run, ``hash_cpu_s``), the median of per-repetition ratios, at most ``goal``. CPU time and not wall
time: the OSD shares the 2 cores with the agent, so a wall-time ratio measures the machine, not us; the OSD's
own CPU is reported apart.
"""

from __future__ import annotations

from dataclasses import dataclass

ZSTACK_RBD = "zstack: deep cp + export|md5sum"
SHELL_RBD = "shell: export|tee(md5sum)|import"
QEMU_IMG_QCOW2 = "qemu-img convert -O qcow2 + md5sum"
QEMU_IMG_RAW = "qemu-img convert -O raw + md5sum"
CEILING_HASHLIB = "md5 ceiling (hashlib)"
CEILING_NATIVE = "md5 ceiling (native)"


def chosen_md5_ceiling(host: dict) -> str:
    """The MD5 ceiling row of the implementation the agent chose on the run's host (``host`` facts)."""
    choice = (host.get("native_md5") or {}).get("choice", "hashlib")
    return CEILING_NATIVE if str(choice).startswith("native") else CEILING_HASHLIB


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
    # (the qemu-img engine -> uncompressed qcow2 had 1.0 "or drop the engine": dropped, see bench/README.md)
    RatioTarget("dense", CEILING_NATIVE, CEILING_HASHLIB, 1.0, "native MD5 never slower than hashlib"),
)

@dataclass(frozen=True)
class CpuTarget:
    """The agent's CPU per GiB copying ``volume`` with ``tool`` is at most ``goal`` times the chosen MD5's."""

    volume: str
    tool: str
    goal: float
    why: str = ""

    @property
    def name(self) -> str:
        return f"{self.volume}: {self.tool} agent CPU per GiB vs MD5's"


CPU_TARGETS: tuple[CpuTarget, ...] = (
    CpuTarget("dense", "ours (copy)", 1.5, "what the copy costs beyond the MD5 it must compute"),
)

# Limits that are not a ratio against a baseline (see report.targets for how each is measured).
LIMITS = {
    "peak_rss_mib": 300,  # peak RSS of one copy's process, MiB
    # 4 copies at once (one process, a thread each) against the same 4 one at a time, same repetition:
    "concurrent_cpu_ratio": 1.05,  # agent CPU of the four together / the sum of the four alone (5 %: noise)
    "concurrent_peak_rss_mib": 600,  # peak RSS of the process running all four, MiB
    "concurrent_stall_share": 0.25,  # longest time any job went without progress / the four's wall time
}

# The baseline each volume kind's tools are drawn against first (the path users run today).
MAIN_BASELINE = {"rbd": ZSTACK_RBD, "qcow2": QEMU_IMG_QCOW2}
