"""Oracle workload 1: deep single-threaded code. pylint (astroid) over copies of stdlib
packages, one package per pylint run, round-robin (astroid's cache cleared between runs)
until MIN_SECONDS have passed, so the run outlasts the capture on any machine without
overshooting it by much. Usage: pylint_job.py MIN_SECONDS DIR..."""
import sys
import time

from pylint.lint import Run
import astroid

ARGS = ["--jobs=1", "--persistent=n", "--score=n", "-rn", "--output=/dev/null",
        "--disable=all", "--enable=E,W,R,C"]


def main():
    min_s = float(sys.argv[1])
    dirs = sys.argv[2:]
    print("ORACLE-READY", flush=True)
    t0 = time.monotonic()
    rounds = 0
    while True:
        Run(ARGS + [dirs[rounds % len(dirs)]], exit=False)
        rounds += 1
        if time.monotonic() - t0 >= min_s:
            break
        astroid.MANAGER.clear_cache()
    print(f"ORACLE-DONE rounds={rounds} seconds={time.monotonic() - t0:.1f}", flush=True)


main()
