"""The MD5 choice (zsagent.copy.md5_choice): the rule on injected figures, the cache in a data dir, the
environment override, and the text `zsagent check` prints. No test asserts a speed: every figure a
decision is checked on is injected."""

from __future__ import annotations

import json
import logging
import os

import pytest

from zsagent.checks import md5_finding
from zsagent.copy import md5 as md5_mod
from zsagent.copy import md5_choice
from zsagent.copy.md5 import HashlibMD5
from zsagent.copy.md5_choice import CACHE_FILE_NAME, HASHLIB, Md5Choice, decide

native = md5_choice.native
# Under CI=true the extension must be built (scripts/setup builds it): a missing one fails, not skips.
needs_native = pytest.mark.skipif(native is None and os.environ.get("CI") != "true",
                                  reason="zsagent._md5 is not built")


def fake_figures(hashlib_mib_s: float = 600.0, native_mib_s: float = 500.0) -> dict[str, float]:
    """Figures for the implementations this process really has (the cache checks they match)."""
    return {name: (hashlib_mib_s if name == HASHLIB else native_mib_s) for name in md5_choice.available()}


class CountingMeasure:
    def __init__(self, figures: dict[str, float]) -> None:
        self.figures = figures
        self.calls = 0

    def __call__(self) -> dict[str, float]:
        self.calls += 1
        return dict(self.figures)


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize(("figures", "expected"), [
    ({"hashlib": 688.0, "native(avx512)": 519.0, "native(scalar)": 600.0}, ("hashlib", "native(scalar)")),
    ({"hashlib": 665.0, "native(avx512)": 820.0, "native(scalar)": 700.0}, ("native(avx512)", "native(avx512)")),
    ({"hashlib": 600.0, "native(avx512)": 610.0}, ("hashlib", "native(avx512)")),  # +1.7 %: within the margin
    ({"hashlib": 600.0, "native(avx512)": 600.0}, ("hashlib", "native(avx512)")),  # a tie keeps hashlib
    ({"hashlib": 600.0, "native(avx512)": 618.0}, ("native(avx512)", "native(avx512)")),  # exactly +3 %
    ({"hashlib": 600.0, "native(avx512)": 500.0, "native(scalar)": 640.0}, ("native(scalar)", "native(scalar)")),
    ({"hashlib": 600.0}, ("hashlib", None)),  # the extension not built
])
def test_decide(figures, expected):
    assert decide(figures) == expected


def test_decide_margin_is_a_parameter():
    figures = {"hashlib": 600.0, "native(avx512)": 650.0}  # +8.3 %
    assert decide(figures, margin=0.05)[0] == "native(avx512)"
    assert decide(figures, margin=0.10)[0] == "hashlib"


def test_resumable_cost_is_the_figure_difference():
    choice = Md5Choice("hashlib", "native(avx512)", {"hashlib": 688.0, "native(avx512)": 516.0})
    assert choice.resumable_cost == pytest.approx(0.25)
    assert Md5Choice("native(avx512)", "native(avx512)", {"hashlib": 1.0, "native(avx512)": 2.0}).resumable_cost == 0
    assert Md5Choice("hashlib", "native(avx512)").resumable_cost is None  # not measured


# ---------------------------------------------------------------- the cache


def test_cache_miss_measures_and_writes_then_hits(tmp_path):
    measure = CountingMeasure(fake_figures())
    first = md5_choice.evaluate(tmp_path, env={}, measure_fn=measure)
    assert (measure.calls, first.source) == (1, "measured")
    document = json.loads((tmp_path / CACHE_FILE_NAME).read_text())
    assert document["format"] == 1 and document["key"] == md5_choice.cache_key()
    assert document["figures_mib_s"] == fake_figures()
    second = md5_choice.evaluate(tmp_path, env={}, measure_fn=measure)
    assert (measure.calls, second.source) == (1, "cached")
    assert second.figures == first.figures and second.impl == first.impl


@pytest.mark.parametrize(("field", "value"), [
    ("cpu_model", "AMD EPYC 9R14 96-Core Processor"),
    ("cpu_flags_sha256", "0000000000000000"),
    ("openssl", "OpenSSL 3.5.0 8 Apr 2025"),
    ("native_sha256", "ffffffffffffffff"),
    ("native_kernels", ["scalar"]),
    ("zsagent", "0.0.1"),
])
def test_cache_invalidated_by_another_cpu_or_library(tmp_path, field, value):
    measure = CountingMeasure(fake_figures(600.0, 500.0))
    md5_choice.evaluate(tmp_path, env={}, measure_fn=measure)
    path = tmp_path / CACHE_FILE_NAME
    document = json.loads(path.read_text())
    document["key"][field] = value  # as if written on another host / by another build
    path.write_text(json.dumps(document))
    measure.figures = fake_figures(500.0, 600.0)
    choice = md5_choice.evaluate(tmp_path, env={}, measure_fn=measure)
    assert (measure.calls, choice.source) == (2, "measured")
    assert json.loads(path.read_text())["key"] == md5_choice.cache_key()  # rewritten for this host


def test_cache_key_follows_the_cpu(monkeypatch):
    key = md5_choice.cache_key()
    monkeypatch.setattr(md5_choice, "cpu_identity", lambda: ("AMD EPYC 9R14 96-Core Processor", "1234"))
    other = md5_choice.cache_key()
    assert other != key and other["cpu_model"].startswith("AMD EPYC")


def test_cpu_identity_reads_model_and_flags():
    intel = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx512f sse2\n\n" \
            "processor\t: 1\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx512f sse2\n"
    reordered = "model name\t: Intel(R) Xeon(R)\nflags\t\t: sse2 fpu avx512f\n"
    no_avx512 = "model name\t: Intel(R) Xeon(R)\nflags\t\t: sse2 fpu\n"
    assert md5_choice.cpu_identity(intel) == md5_choice.cpu_identity(reordered)
    assert md5_choice.cpu_identity(intel)[0] == "Intel(R) Xeon(R)"
    assert md5_choice.cpu_identity(intel)[1] != md5_choice.cpu_identity(no_avx512)[1]


@pytest.mark.parametrize("content", [
    "", "{not json", "[]", '{"format": 1}', "null",
    '{"format": 1, "key": KEY, "figures_mib_s": {"hashlib": "fast"}}',
    '{"format": 1, "key": KEY, "figures_mib_s": {"hashlib": -5}}',
    '{"format": 1, "key": KEY, "figures_mib_s": {"hashlib": 600, "native(nosuch)": 700}}',
    '{"format": 2, "key": KEY, "figures_mib_s": FIGURES}',
])
def test_corrupt_cache_is_ignored_and_rewritten(tmp_path, content):
    path = tmp_path / CACHE_FILE_NAME
    path.write_text(content.replace("KEY", json.dumps(md5_choice.cache_key()))
                    .replace("FIGURES", json.dumps(fake_figures())))
    measure = CountingMeasure(fake_figures())
    choice = md5_choice.evaluate(tmp_path, env={}, measure_fn=measure)
    assert (measure.calls, choice.source, choice.figures) == (1, "measured", fake_figures())
    assert md5_choice.load_cached(path, md5_choice.cache_key()) == fake_figures()


def test_unwritable_cache_dir_still_decides(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    measure = CountingMeasure(fake_figures())
    choice = md5_choice.evaluate(blocker / "data", env={}, measure_fn=measure)
    assert (measure.calls, choice.impl) == (1, HASHLIB)


def test_no_cache_dir_measures_each_time_asked():
    measure = CountingMeasure(fake_figures())
    md5_choice.evaluate(None, env={}, measure_fn=measure)
    md5_choice.evaluate(None, env={}, measure_fn=measure)
    assert measure.calls == 2  # the process-wide memo is md5.choose()'s, tested below


def test_measure_covers_every_implementation():
    figures = md5_choice.measure(runs=1, buffer_bytes=64 * 1024, updates_per_run=1)
    assert sorted(figures) == sorted(md5_choice.available())
    assert all(mib_s > 0 for mib_s in figures.values())


# ---------------------------------------------------------------- the environment override


@pytest.mark.parametrize("value", ["hashlib", " HASHLIB "])
def test_env_forces_hashlib_without_measuring(tmp_path, value):
    measure = CountingMeasure(fake_figures(500.0, 900.0))
    choice = md5_choice.evaluate(tmp_path, env={"ZSAGENT_MD5": value}, measure_fn=measure)
    assert (measure.calls, choice.impl, choice.source) == (0, HASHLIB, "ZSAGENT_MD5=hashlib")
    assert not (tmp_path / CACHE_FILE_NAME).exists()


@needs_native
def test_env_forces_native_even_when_slower(tmp_path):
    md5_choice.evaluate(tmp_path, env={}, measure_fn=CountingMeasure(fake_figures(900.0, 500.0)))
    measure = CountingMeasure(fake_figures())
    choice = md5_choice.evaluate(tmp_path, env={"ZSAGENT_MD5": "native"}, measure_fn=measure)
    assert measure.calls == 0 and choice.native and choice.figures == fake_figures(900.0, 500.0)  # cached ones


@needs_native
def test_env_names_one_native_kernel(tmp_path):
    """The bench hands its workers the host's choice by name (``native`` alone means the first kernel)."""
    md5_choice.evaluate(tmp_path, env={}, measure_fn=CountingMeasure(fake_figures(900.0, 500.0)))
    name = md5_choice.native_name(md5_choice.native.KERNELS[-1])
    choice = md5_choice.evaluate(tmp_path, env={"ZSAGENT_MD5": name}, measure_fn=CountingMeasure(fake_figures()))
    assert (choice.impl, choice.resumable_impl, choice.source) == (name, name, f"ZSAGENT_MD5={name}")
    assert md5_choice.forced({"ZSAGENT_MD5": "native(no-such-kernel)"}) is None


def test_env_unknown_value_is_ignored(tmp_path):
    measure = CountingMeasure(fake_figures(900.0, 500.0))
    choice = md5_choice.evaluate(tmp_path, env={"ZSAGENT_MD5": "fastest"}, measure_fn=measure)
    assert (measure.calls, choice.impl, choice.source) == (1, HASHLIB, "measured")


# ---------------------------------------------------------------- md5.choose(): once per process, lazy


@pytest.fixture
def fresh_choice(monkeypatch):
    monkeypatch.setattr(md5_mod, "_choice", None)
    monkeypatch.delenv("ZSAGENT_MD5", raising=False)


def test_choose_decides_once_and_logs_one_line(tmp_path, monkeypatch, fresh_choice, caplog):
    measure = CountingMeasure(fake_figures(900.0, 500.0))
    monkeypatch.setattr(md5_choice, "measure", measure)
    with caplog.at_level(logging.INFO, logger="zsagent.copy.md5"):
        first = md5_mod.choose(tmp_path)
        assert md5_mod.choose(tmp_path / "other") is first and md5_mod.choose() is first
        assert md5_mod.USE_NATIVE is False and isinstance(md5_mod.new_md5(), HashlibMD5)
    assert measure.calls == 1
    [record] = [r for r in caplog.records if r.name == "zsagent.copy.md5"]
    assert record.getMessage().startswith("MD5: hashlib 900 MiB/s") and "using hashlib" in record.getMessage()


def test_import_measures_nothing():
    import subprocess
    import sys

    code = "import zsagent.copy.md5 as m, zsagent.copy.pipeline; print(m._choice is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@needs_native
def test_resumable_stream_is_native_whatever_the_choice(monkeypatch, fresh_choice):
    monkeypatch.setattr(md5_mod, "_choice", Md5Choice(HASHLIB, md5_choice.native_name(native.KERNELS[-1]),
                                                      fake_figures(900.0, 500.0)))
    assert isinstance(md5_mod.new_md5(), HashlibMD5)
    stream = md5_mod.new_md5(resumable=True)
    stream.update(b"abc")
    assert stream.kernel == native.KERNELS[-1]
    resumed = md5_mod.resume_md5(stream.state())
    resumed.update(b"def")
    import hashlib

    assert resumed.hexdigest() == hashlib.md5(b"abcdef").hexdigest()


# ---------------------------------------------------------------- what `zsagent check` says


def test_summary_text():
    choice = Md5Choice("hashlib", "native(avx512)", {"hashlib": 688.2, "native(avx512)": 519.4})
    expected = "MD5: hashlib 688 MiB/s, native(avx512) 519 MiB/s — using hashlib"
    assert choice.summary() == expected + ("" if native is not None else " (zsagent._md5 is not built)")
    forced = Md5Choice("native(avx512)", "native(avx512)", {}, source="ZSAGENT_MD5=native")
    assert forced.summary() == "MD5: not measured — using native(avx512) (ZSAGENT_MD5=native)"


def test_check_finding_uses_the_data_dirs_figures(tmp_path, monkeypatch):
    figures = fake_figures(688.0, 519.0)
    md5_choice.store_cached(tmp_path / CACHE_FILE_NAME, md5_choice.cache_key(), figures)
    monkeypatch.delenv("ZSAGENT_MD5", raising=False)
    ok, what, fix = md5_finding(str(tmp_path))
    listed = ", ".join(f"{name} {mib_s:.0f} MiB/s" for name, mib_s in figures.items())
    assert ok and fix == "" and what.startswith(f"MD5: {listed} — using hashlib")
    monkeypatch.setenv("ZSAGENT_MD5", "hashlib")
    assert md5_finding(str(tmp_path))[1] == f"MD5: {listed} — using hashlib (ZSAGENT_MD5=hashlib)"


def test_agent_start_decides_with_its_data_dir(tmp_path, monkeypatch, fresh_choice):
    from zsagent.agent import build_agent
    from zsagent.config import parse_config

    monkeypatch.setattr(md5_choice, "measure", CountingMeasure(fake_figures(900.0, 500.0)))
    config = parse_config({"agent": {"data_dir": str(tmp_path / "data")},
                           "auth": {"sessions_file": str(tmp_path / "sessions")}})
    agent = build_agent(config)
    try:
        assert md5_mod._choice is not None and md5_mod._choice.figures == fake_figures(900.0, 500.0)
        assert md5_choice.load_cached(tmp_path / "data" / CACHE_FILE_NAME, md5_choice.cache_key()) is not None
    finally:
        agent.close()
