// Validates a speedscope file against the file-format schema shipped in the `speedscope`
// npm package (with ajv), and checks that every evented profile's O/C events nest: each C
// closes the innermost open frame, times never go back, and nothing is left open.
//
// usage: node speedscope.js NODE_MODULES_DIR FILE
// prints {"schema_errors": [...], "profiles": [{"name", "events", "max_depth", "problems": [...]}]}
'use strict';
const fs = require('fs');
const path = require('path');
const [modules, file] = process.argv.slice(2);
const Ajv = require(path.join(path.resolve(modules), 'ajv'));
const schema = JSON.parse(fs.readFileSync(path.join(modules, 'speedscope/dist/release/file-format-schema.json'), 'utf8'));
const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
const ajv = new Ajv({ allErrors: true, strict: false });
const validate = ajv.compile(schema);
const out = { schema_errors: [], profiles: [] };
if (!validate(doc)) out.schema_errors = validate.errors.slice(0, 20).map((e) => `${e.instancePath} ${e.message}`);
const nframes = (doc.shared && doc.shared.frames || []).length;
for (const p of doc.profiles || []) {
  const r = { name: p.name, events: 0, max_depth: 0, problems: [] };
  if (p.type === 'evented') {
    const stack = [];
    let last = -Infinity;
    for (const e of p.events) {
      r.events++;
      if (e.at < last) r.problems.push(`time goes back at event ${r.events}`);
      last = e.at;
      if (e.frame < 0 || e.frame >= nframes) r.problems.push(`frame ${e.frame} out of range`);
      if (e.type === 'O') { stack.push(e.frame); r.max_depth = Math.max(r.max_depth, stack.length); }
      else if (stack.pop() !== e.frame) r.problems.push(`C of frame ${e.frame} does not close the innermost open frame (event ${r.events})`);
      if (r.problems.length > 10) break;
    }
    if (stack.length) r.problems.push(`${stack.length} frames left open`);
    if (p.startValue > (p.events[0] || { at: p.startValue }).at || p.endValue < last) r.problems.push('events outside startValue..endValue');
  }
  out.profiles.push(r);
}
console.log(JSON.stringify(out));
