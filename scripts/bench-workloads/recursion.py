"""Workload 2: recursion 200 calls deep. The innermost call does the work and
checks the clock; the stack stays 200 frames deep nearly all the time.
Unit: 100 additions at the bottom of the stack."""
import sys
import time
from _report import REPORT_NS, emit, max_seconds

DEPTH = 200
sys.setrecursionlimit(DEPTH + 100)
state = {"count": 0, "next": 0, "end": 0}


def bottom():
    count = state["count"]
    x = 0
    for _ in range(64):
        for i in range(100):
            x += i
        count += 1
    state["count"] = count
    return x


def recurse(n):
    if n == 0:
        # stay at the bottom until the next report is due
        while True:
            bottom()
            now = time.monotonic_ns()
            if now >= state["next"]:
                return now
    return recurse(n - 1)


def main():
    state["end"] = time.monotonic_ns() + int(max_seconds() * 1e9)
    while True:
        now = recurse(DEPTH - 2)  # main() and <module> make 200
        emit(state["count"])
        state["next"] = now + REPORT_NS
        if now >= state["end"]:
            return


main()
