"""Shared by the bench workloads: report the work done so far, as
`WORK <CLOCK_MONOTONIC ns> <units done>` lines on stdout, every REPORT_NS.

The harness (scripts/bench) reads these lines and interpolates the count at
the moments a profiler was started and stopped, so a workload's rate alone and
with a profiler attached come from the same process and the same clock.
A workload runs until killed, or for at most argv[1] seconds (a safety net).
"""
import os
import sys
import time

REPORT_NS = 50_000_000


def max_seconds():
    return float(sys.argv[1]) if len(sys.argv) > 1 else 600.0


def emit(count):
    os.write(1, b"WORK %d %d\n" % (time.monotonic_ns(), count))
