"""``python -m bench history``: what exporting the call history to the database costs.

Alternates throughput runs of no-op calls (``bench calls``' throughput part) with the history
export on and off (``EC_HISTORY``), each on a fresh throwaway node with the embedded SQLite
store, and reports the medians and the cost of export in percent (target: under 10 %).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from . import calls
from .harness import print_result


def run(rounds: int, throughput_calls: int, window: int) -> dict[str, Any]:
    on: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        for setting, samples in (("on", on), ("off", off)):
            result = calls.run(latency_calls=200, throughput_calls=throughput_calls, window=window, cpus=2,
                               workers=2, env={"EC_HISTORY": setting})
            samples.append(result["throughput_calls_per_s"])
    on_median, off_median = statistics.median(on), statistics.median(off)
    return {
        "bench": "history",
        "rounds": rounds,
        "calls_per_round": throughput_calls,
        "history_on_calls_per_s": on_median,
        "history_off_calls_per_s": off_median,
        "history_on_runs": on,
        "history_off_runs": off,
        "export_cost_percent": round((off_median - on_median) / off_median * 100, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench history", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=1024)
    args = parser.parse_args(argv)
    result = run(args.rounds, args.calls, args.window)
    print_result(result, args.json)
    return 0
