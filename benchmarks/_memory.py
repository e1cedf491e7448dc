"""Peak resident memory of a benchmark process (shared by the benchmark scripts)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited across exec), in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_measured(argv: list[str]) -> dict:
    """Run ``histoscope ARGV`` in a fresh Python process; return its wall ``seconds``, ``peak_mb`` and ``rc``.

    The child (this file run as a script) executes the command in-process and reports its own
    VmHWM, so the figure is the command's, not a wrapper's.
    """
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    if proc.returncode or not line:
        raise RuntimeError(f"histoscope {' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(line[-1][2:])


def _child(argv: list[str]) -> None:
    from histoscope.cli.main import cli

    t0 = time.perf_counter()
    try:
        cli.main(args=argv, prog_name="histoscope", standalone_mode=False)
        rc = 0
    except SystemExit as exc:
        rc = int(exc.code or 0)
    print("@@" + json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak_rss_mb(), "rc": rc}), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1:])
