"""Figures the fault and load tests measure (bytes re-sent on a resume, cancel latency, /health latency,
RSS), printed together at the end of the test run (tests/conftest.py) so that they stay in its output."""

from __future__ import annotations

FIGURES: list[tuple[str, str]] = []


def report(test: str, text: str) -> None:
    """Keep one line ``text`` for the summary, under the name of the test that measured it."""
    FIGURES.append((test, text))
    print(f"figure: {test}: {text}")
