"""Command line entry point (grows into `zsagent copy`, `serve`, ...)."""

import sys


def main() -> int:
    print("zsagent: no commands yet", file=sys.stderr)
    return 2
