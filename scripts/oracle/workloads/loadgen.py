"""Untraced load generator: THREADS client threads GET random PATHS from 127.0.0.1:PORT
until SECONDS have passed. Prints how many requests succeeded. Stdlib only.
Usage: loadgen.py PORT SECONDS THREADS PATH..."""
import http.client
import random
import sys
import threading
import time


def main():
    port, seconds, nthreads, paths = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    deadline = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def client(seed):
        rnd = random.Random(seed)
        while time.monotonic() < deadline:
            ok = 0
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("GET", rnd.choice(paths))
                r = c.getresponse()
                r.read()
                ok = r.status == 200
                c.close()
            except OSError:
                time.sleep(0.05)
            with lock:
                counts[0 if ok else 1] += 1

    ts = [threading.Thread(target=client, args=(i,)) for i in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"loadgen: {counts[0]} ok, {counts[1]} failed", flush=True)


main()
