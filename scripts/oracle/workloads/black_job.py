"""Oracle workload 4: generator-heavy single-threaded code. black (its pure-Python build:
the oracle's venvs install black and pytokens from source without mypyc) reformats the
same copies of stdlib packages pylint lints, file after file, until MIN_SECONDS have
passed. Its tree walks are chains of generators 30-40 deep (`Visitor.visit` delegating
to `visit_default` with `yield from`, a new generator per node), so nearly every frame
of the stack lives on the heap and the innermost ones are new at every sample.
Usage: black_job.py MIN_SECONDS DIR..."""
import glob
import os
import sys
import time

import black


def main():
    min_s = float(sys.argv[1])
    files = sorted(f for d in sys.argv[2:] for f in glob.glob(os.path.join(d, "**", "*.py"), recursive=True))
    sources = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            sources.append(fh.read())
    mode = black.Mode()
    print("ORACLE-READY", flush=True)
    t0 = time.monotonic()
    n = 0
    while True:
        black.format_str(sources[n % len(sources)], mode=mode)
        n += 1
        if time.monotonic() - t0 >= min_s:
            break
    print(f"ORACLE-DONE files={n} seconds={time.monotonic() - t0:.1f}", flush=True)


main()
