"""Workload 5: the shape of an idle worker pool. 32 threads wait 80 calls deep (a
request handler blocked on a socket, say) and never wake; one thread computes. Unit: 100
additions done by the busy thread. What it measures: what a sampler pays per tick for
threads that did not run."""
import threading
import time
from _report import REPORT_NS, emit, max_seconds

IDLE = 32
DEPTH = 80
count = [0]
stop = threading.Event()


def compute(n):
    x = 0
    for i in range(100):
        x += i * n
    return x


def deep(n, then):
    if n == 0:
        return then()
    return deep(n - 1, then)


def idle():
    deep(DEPTH, stop.wait)


def busy():
    c = 0
    while not stop.is_set():
        for _ in range(32):
            compute(c)
            c += 1
        count[0] = c


def main():
    end = time.monotonic() + max_seconds()
    threads = [threading.Thread(target=idle, name=f"idle-{i}") for i in range(IDLE)]
    threads.append(threading.Thread(target=busy, name="busy"))
    for t in threads:
        t.daemon = True
        t.start()
    while time.monotonic() < end:
        emit(count[0])
        time.sleep(REPORT_NS / 1e9)
    stop.set()


main()
