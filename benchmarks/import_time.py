"""Import time: ``python -c "import taskdb"`` against a bare interpreter, same run.

Each command first runs once untimed (a warm-up: it writes any missing
``.pyc`` and fills the OS file cache), then ``--runs`` times in a fresh
interpreter, interleaved, with the order of the commands rotated each round (so
a busy moment of the machine, or going first, hits every command alike); every
timed run counts. It
reports the median and the min-max of the wall time, and what taskdb adds to
the bare interpreter. ``import taskdb`` loads only the error classes; the
first use of a name loads its subpackage, so the cost of
``from taskdb import connect, JobQueueClient, JobQueueServer`` is shown too.

Target: ``import taskdb`` under 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET_SECONDS = 0.3

COMMANDS = {
    "bare interpreter (python -c pass)": "pass",
    "import taskdb": "import taskdb",
    "from taskdb import connect, JobQueueClient, JobQueueServer": (
        "from taskdb import connect, JobQueueClient, JobQueueServer"
    ),
    "import taskdb.cli (what `taskdb --help` loads)": "import taskdb.cli",
}


def _time(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (15)")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for name in names:  # warm-up round, untimed: .pyc writes, file cache
        _time(COMMANDS[name])
    for round_ in range(args.runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time(COMMANDS[name]))
    bare = statistics.median(samples["bare interpreter (python -c pass)"])
    print(
        f"import time, {args.runs} interleaved runs each (order rotated, after one "
        f"untimed warm-up round), Python {sys.version.split()[0]}"
    )
    print(f"{'command':<62} {'median s':>9} {'min-max s':>15} {'+ over bare':>12}")
    for name, runs in samples.items():
        median = statistics.median(runs)
        spread = f"{min(runs):.3f}-{max(runs):.3f}"
        print(f"{name:<62} {median:>9.3f} {spread:>15} {median - bare:>12.3f}")
    median = statistics.median(samples["import taskdb"])
    verdict = "PASS" if median < TARGET_SECONDS else "MISS"
    print(f"{verdict} import taskdb: median {median:.3f} s (target < {TARGET_SECONDS} s)")


if __name__ == "__main__":
    main()
