"""``python -m bench NAME``: run one of the project's benchmarks."""

from __future__ import annotations

import argparse
import sys

from . import calls, flows, history, mesh, topology

BENCHES = {"calls": calls.main, "flows": flows.main, "history": history.main, "mesh": mesh.main,
           "topology": topology.main}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="ElasticCode benchmarks")
    parser.add_argument("name", choices=sorted(BENCHES))
    args, rest = parser.parse_known_args(argv)
    return BENCHES[args.name](rest)


if __name__ == "__main__":
    sys.exit(main())
