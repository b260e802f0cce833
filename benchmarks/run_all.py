"""Run every benchmark, one after another, each in a fresh interpreter, printing all tables.

    python -m benchmarks.run_all            # about 3 minutes on 2 cores
    python -m benchmarks.run_all --quick    # smoke run, well under a minute
    python -m benchmarks.run_all --profile  # also the publish_batch profile

``--runs`` is passed to every benchmark that takes it; ``--only throughput,latency`` picks.
"""

from __future__ import annotations

import subprocess
import sys
import time

from ._common import REPO_ROOT, base_parser, parse

SUITE = ("startup", "throughput", "latency", "sessions", "memory")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SUITE)}")
    parser.add_argument("--profile", action="store_true",
                        help="also run profile_publish (cProfile of publish_batch)")
    args = parse(parser, argv)
    names = [n for n in (args.only.split(",") if args.only else SUITE) if n]
    if args.profile:
        names.append("profile_publish")
    flags = ["--no-header"]
    if args.quick:
        flags.append("--quick")
    if args.verbose:
        flags.append("--verbose")
    failed = []
    started = time.perf_counter()
    for name in names:
        extra = ["--runs", str(args.runs)] if args.runs is not None and name != \
            "profile_publish" else []
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *flags, *extra],
                              cwd=REPO_ROOT, check=False)
        print(f"\n[{name}: {time.perf_counter() - t0:.0f} s"
              f"{'' if proc.returncode == 0 else f', FAILED with exit code {proc.returncode}'}]",
              flush=True)
        if proc.returncode != 0:
            failed.append(name)
    print(f"\nsuite finished in {time.perf_counter() - started:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
