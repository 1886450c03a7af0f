"""`python -m bench [--quick] [--only NAME]`: run the scenarios, print one table, write
`bench/results/latest.json`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from bench import cycle, delay, footprint, page, recovery, scale
from bench.common import Env, Figure, Results

SCENARIOS: dict[str, ModuleType] = {
    "cycle": cycle,
    "delay": delay,
    "recovery": recovery,
    "footprint": footprint,
    "page": page,
    "scale": scale,
}
OPT_IN = frozenset({"scale"})  # a million rows: minutes of its own, run with --only scale
RESULTS = Path(__file__).parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small fleets: a smoke run")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", metavar="NAME")
    args = parser.parse_args(argv)
    names = args.only or [name for name in SCENARIOS if name not in OPT_IN]
    results = Results()
    env = Env(quick=args.quick)
    started = time.monotonic()
    failed: list[str] = []
    try:
        for name in names:
            print(f"{name} …", flush=True)
            t0 = time.monotonic()
            try:
                SCENARIOS[name].run(env, results)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                results.details.setdefault("errors", {})[name] = traceback.format_exc()
            results.details.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 1)
    finally:
        env.close()
    total = time.monotonic() - started
    print()
    print(table(results.figures))
    print(
        f"\n{len(names)} scenario(s) in {total:.0f} s" + (f"; FAILED: {failed}" if failed else "")
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "scenarios": names,
        "seconds": round(total, 1),
        "host": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        **results.as_json(),
    }
    RESULTS.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results: {RESULTS}")
    return 1 if failed else 0


def _value(f: Figure) -> str:
    if f.value is None:
        return "n/a"
    text = f"{f.value:g}" if isinstance(f.value, float) else str(f.value)
    return f"{text} {f.unit}".rstrip()


def table(figures: list[Figure]) -> str:
    status = {True: "met", False: "MISSED", None: ""}
    rows = [("scenario", "metric", "value", "target", "")]
    rows += [(f.scenario, f.metric, _value(f), f.target, status[f.met]) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2])]
        cells += [row[3].ljust(widths[3]), row[4]]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
