"""Workload 1: a CPU-bound loop five calls deep. Unit: one call of level1()
(level1 -> level2 -> level3 -> level4 -> level5, which does 100 additions)."""
import time
from _report import REPORT_NS, emit, max_seconds


def level5(n):
    x = 0
    for i in range(100):
        x += i * n
    return x


def level4(n):
    return level5(n) + 1


def level3(n):
    return level4(n) + 1


def level2(n):
    return level3(n) + 1


def level1(n):
    return level2(n) + 1


def main():
    end = time.monotonic_ns() + int(max_seconds() * 1e9)
    count = 0
    next_report = time.monotonic_ns()
    while True:
        for _ in range(64):
            level1(count)
            count += 1
        now = time.monotonic_ns()
        if now >= next_report:
            emit(count)
            next_report = now + REPORT_NS
            if now >= end:
                return


main()
