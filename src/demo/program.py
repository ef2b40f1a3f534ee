"""vizattach's demo program: a small service-shaped workload to record.

The main thread handles "requests" (parse -> tokenize, render pulling rows from a
generator), two workers compute (recursive fib, a sort), and a poller sleeps between
short checks. It prints "ready" once every thread runs, and exits when its stdin closes
(vizattach holds the other end), so it never outlives the demo.

Runs on CPython 3.8 and newer.
"""
import os
import sys
import threading
import time


def tokenize(text):
    return [word.strip(".,") for word in text.split()]


def parse(request):
    words = tokenize(request * 40)
    return {word: len(word) for word in words}


def transform(i, table):
    return sum(table.get(k, 0) for k in ("request", "number", str(i % 7)))


def rows(n, table):
    # a generator: its frame lives on the heap and is resumed by render's loop
    for i in range(n):
        yield transform(i, table)


def render(table):
    return sum(row for row in rows(2000, table))


def handle_request(i):
    table = parse("request number %d, a few words to tokenize." % i)
    return render(table)


def serve():
    i = 0
    while True:
        handle_request(i)
        i += 1
        time.sleep(0.002)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def compute(seed):
    values = [(seed * 7919 + k * 104729) % 10007 for k in range(3000)]
    values.sort()
    return fib(16) + values[0]


def worker(seed):
    while True:
        compute(seed)
        time.sleep(0.01)


def check():
    return os.getpid() > 0


def poll():
    while True:
        check()
        time.sleep(0.05)


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


def main():
    threading.Thread(target=exit_when_stdin_closes, name="stdin-watch", daemon=True).start()
    for name, target, args in (("worker-1", worker, (1,)), ("worker-2", worker, (2,)), ("poller", poll, ())):
        threading.Thread(target=target, args=args, name=name, daemon=True).start()
    print("ready", flush=True)
    serve()


if __name__ == "__main__":
    main()
