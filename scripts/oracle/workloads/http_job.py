"""Oracle workload 2: a thread per request. The stdlib's ThreadingHTTPServer with
SimpleHTTPRequestHandler serving DOCROOT on 127.0.0.1:PORT, shut down cleanly after SECONDS
(so VizTracer writes its file). Usage: http_job.py PORT SECONDS DOCROOT"""
import functools
import http.server
import sys
import threading


def main():
    port, seconds, docroot = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=docroot)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Timer(seconds, server.shutdown).start()
    print("ORACLE-READY", port, flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    print("ORACLE-DONE", flush=True)


main()
