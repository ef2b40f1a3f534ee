"""Oracle workload 3: a thread-pool web app. A Flask app rendering Jinja2 templates (a
table with loops, macros, filters, autoescaping: real work per request) under waitress'
thread pool (4 threads, one process) on 127.0.0.1:PORT, stopped after SECONDS: the main
thread runs server.run(), waitress' own event loop (one wasyncore.loop call, as
waitress.serve() runs it); a timer then hands the loop a trigger thunk that empties its
channel map, so the loop returns, and the pool is shut down the way run() does on Ctrl-C.
(Interrupting server.run() with _thread.interrupt_main() was tried first: under VizTracer
on 3.11 the KeyboardInterrupt was sometimes lost and the server never stopped. Calling
wasyncore.loop(count=1) over and over was used next: it made back-to-back calls of `loop`
that no sampler can tell apart, the same objects in every slot at the same offset, which
no real waitress server makes.)
Usage: flask_job.py PORT SECONDS"""
import sys
import threading

import flask
import waitress

PAGE = """{% macro cell(v, cls) -%}<td class="{{ cls }}">{{ v }}</td>{%- endmacro %}
<!doctype html><html><head><title>{{ title|title }}</title></head><body>
<h1>{{ title|upper }} ({{ rows|length }} rows)</h1>
<table>{% for r in rows %}<tr class="{{ loop.cycle('odd', 'even') }}">
{{ cell(r.id, 'id') }}{{ cell(r.name|e|truncate(20), 'name') }}{{ cell('%.2f'|format(r.price), 'price') }}
{{ cell(r.tags|join(', '), 'tags') }}{% if r.note %}{{ cell(r.note|wordwrap(30), 'note') }}{% endif %}
</tr>{% endfor %}</table>
<p>{{ rows|sum(attribute='price')|round(2) }} total; {{ rows|map(attribute='name')|unique|list|length }} names</p>
</body></html>"""

app = flask.Flask(__name__)


def make_rows(n, seed):
    return [{"id": i, "name": f"item <{(i * 7 + seed) % 97}> & co", "price": (i * 13 + seed) % 1000 / 7,
             "tags": [f"t{(i + k) % 11}" for k in range(4)], "note": "lorem ipsum dolor " * (i % 4)}
            for i in range(n)]


@app.route("/table/<int:n>")
def table(n):
    return flask.render_template_string(PAGE, title=f"table of {n}", rows=make_rows(n, n))


@app.route("/json/<int:n>")
def as_json(n):
    return flask.jsonify(make_rows(n, 1))


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=4)
    print("ORACLE-READY", port, flush=True)
    channels = []

    def stop():  # a trigger thunk: runs in the main thread, inside the loop
        channels.extend(server._map.values())
        server._map.clear()

    threading.Timer(seconds, server.trigger.pull_trigger, args=(stop,)).start()
    server.run()  # wasyncore.loop(), as waitress.serve() runs it, until the map is empty
    server.task_dispatcher.shutdown()
    for channel in channels:
        channel.close()
    print("ORACLE-DONE", flush=True)


main()
