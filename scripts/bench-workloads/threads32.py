"""Workload 3: 32 threads, 16 busy in a CPU loop and 16 sleeping (waking every
10 ms). Unit: 100 additions done by a busy thread (all busy threads summed)."""
import threading
import time
from _report import REPORT_NS, emit, max_seconds

BUSY = 16
SLEEPING = 16
counts = [0] * BUSY
stop = threading.Event()
go = threading.Event()


def compute(n):
    x = 0
    for i in range(100):
        x += i * n
    return x


def busy(slot):
    go.wait()  # start computing once every thread exists
    c = 0
    while not stop.is_set():
        for _ in range(32):
            compute(c)
            c += 1
        counts[slot] = c


def sleeper():
    while not stop.is_set():
        time.sleep(0.01)


def main():
    end = time.monotonic() + max_seconds()
    threads = [threading.Thread(target=busy, args=(i,), name=f"busy-{i}") for i in range(BUSY)]
    threads += [threading.Thread(target=sleeper, name=f"sleeper-{i}") for i in range(SLEEPING)]
    for t in threads:
        t.daemon = True
        t.start()
    go.set()
    while time.monotonic() < end:
        emit(sum(counts))
        time.sleep(REPORT_NS / 1e9)
    stop.set()


main()
