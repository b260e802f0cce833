"""Import time: ``python -c "import isa_common_mqtt"`` next to paho and a bare interpreter.

Wall time of whole subprocesses (interpreter start included), interleaved, median of N.
Then ``-X importtime`` names the modules that cost the most to import.

    python -m benchmarks.startup [--runs 10] [--quick] [-v]
"""

from __future__ import annotations

import subprocess
import sys
import time

from ._common import REPO_ROOT, base_parser, median, parse, pick, print_table, progress

CASES = {
    'python -c "pass"': "pass",
    'python -c "import paho.mqtt.client"': "import paho.mqtt.client",
    'python -c "import isa_common_mqtt"': "import isa_common_mqtt",
}


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def import_breakdown(module: str, top: int, runs: int) -> list[tuple[str, float, float]]:
    """(module, self µs, cumulative µs), median of ``runs``, of the ``top`` slowest imports."""
    seen: dict[str, tuple[list[int], list[int]]] = {}
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                              capture_output=True, text=True, check=True, cwd=REPO_ROOT)
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cumulative, name = (p.strip() for p in line[len("import time:"):].split("|"))
            entry = seen.setdefault(name, ([], []))
            entry[0].append(int(self_us))
            entry[1].append(int(cumulative))
    rows = [(name, median(s), median(c)) for name, (s, c) in seen.items()]
    return sorted(rows, key=lambda r: -r[1])[:top]


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=12, help="modules in the import breakdown")
    args = parse(parser, argv)
    runs = pick(args.runs, 10, 3, args.quick)
    for code in CASES.values():  # warm the page cache and .pyc files
        wall(code)
    times: dict[str, list[float]] = {label: [] for label in CASES}
    for _ in range(runs):
        for label, code in CASES.items():
            times[label].append(wall(code) * 1000)
            progress(args.verbose, f"{label}: {times[label][-1]:.1f} ms")
    bare = median(times['python -c "pass"'])
    paho_ms = median(times['python -c "import paho.mqtt.client"'])
    rows = [[label, f"{median(v):.1f}", f"{min(v):.1f}", f"{median(v) - bare:.1f}"]
            for label, v in times.items()]
    ours_ms = median(times['python -c "import isa_common_mqtt"'])
    rows.append(["ratio ours / paho (import cost above bare python)", "", "",
                 f"{(ours_ms - bare) / (paho_ms - bare):.2f}x" if paho_ms > bare else "-"])
    print_table(f"Startup, ms (wall time of the whole process, median of {runs})",
                ["command", "median", "min", "minus bare python"], rows)
    breakdown_runs = 1 if args.quick else 3
    breakdown = import_breakdown("isa_common_mqtt", args.top, breakdown_runs)
    print_table(f"Slowest imports under `import isa_common_mqtt` (-X importtime, median of "
                f"{breakdown_runs}, "
                f"top {args.top} by self time)",
                ["module", "self ms", "cumulative ms"],
                [[name, f"{s / 1000:.1f}", f"{c / 1000:.1f}"] for name, s, c in breakdown])


if __name__ == "__main__":
    main()
