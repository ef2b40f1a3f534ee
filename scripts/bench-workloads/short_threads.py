"""Workload 4: threads created and finished continuously. The main thread keeps
4 short-lived worker threads running (each does 2000 additions two calls deep
and exits), starting a new one as soon as one finishes. Unit: one thread
started, run and joined."""
import threading
import time
from _report import REPORT_NS, emit, max_seconds

CONCURRENT = 4


def work():
    x = 0
    for i in range(2000):
        x += i
    return x


def worker():
    work()


def main():
    end = time.monotonic_ns() + int(max_seconds() * 1e9)
    count = 0
    next_report = time.monotonic_ns()
    running = []
    while True:
        while len(running) < CONCURRENT:
            t = threading.Thread(target=worker)
            t.start()
            running.append(t)
        t = running.pop(0)
        t.join()
        count += 1
        now = time.monotonic_ns()
        if now >= next_report:
            emit(count)
            next_report = now + REPORT_NS
            if now >= end:
                break
    for t in running:
        t.join()


main()
