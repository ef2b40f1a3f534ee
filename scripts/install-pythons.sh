#!/usr/bin/env bash
# Builds the test interpreters vizattach is checked against and writes their manifest.
#
# Each Debian suite gets its own minbase root (debootstrap), so the interpreters run
# exactly as Debian ships them, in a root whose /proc/PID/root differs from ours: the
# container case. Idempotent: a root that is complete (stamp file) is left alone.
#
#   VIZATTACH_PYTHONS   where roots and manifest live (default /opt/vizattach-pythons)
set -euo pipefail

BASE=${VIZATTACH_PYTHONS:-/opt/vizattach-pythons}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$BASE"

need_host_pkg() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# debootstrap for the roots, gcc for the offset probes and the embedder fixture,
# libpython3.11-dev for the embedder (a target whose runtime lives in libpython).
need_host_pkg debootstrap gcc libpython3.11-dev python3.11-dev

# suite  packages
ROOTS=(
  "bullseye python3.9 python3.9-dev"
  "trixie python3.13 python3.13-dev"
  "sid python3.13 python3.13-dev python3.14 python3.14-dev python3.15 python3.15-dev"
)

build_root() {
    local suite=$1; shift
    local dir="$BASE/$suite" pkgs
    pkgs=$(IFS=,; echo "$*")
    if [ -f "$dir/.vizattach-complete" ] && [ "$(cat "$dir/.vizattach-complete")" = "$pkgs" ]; then
        return 0
    fi
    echo "install-pythons: building $suite root with $pkgs (about a minute)" >&2
    rm -rf "$dir"
    debootstrap --variant=minbase --include="$pkgs" "$suite" "$dir" "$MIRROR" >"$BASE/$suite.log" 2>&1 || {
        echo "install-pythons: debootstrap $suite failed; last lines of $BASE/$suite.log:" >&2
        tail -20 "$BASE/$suite.log" >&2
        return 1
    }
    echo "$pkgs" >"$dir/.vizattach-complete"
}

for spec in "${ROOTS[@]}"; do
    # shellcheck disable=SC2086
    build_root $spec &
done
fail=0
for job in $(jobs -p); do wait "$job" || fail=1; done
[ $fail -eq 0 ] || exit 1

# The manifest: one entry per interpreter. "root" is "/" for the host's own.
python3 - "$BASE" <<'PY'
import json, os, re, shutil, subprocess, sys
base = sys.argv[1]
entries = []
def probe(root, exe):
    cmd = [exe, "-c", "import sys,sysconfig;print(sys.version.split()[0]);print(sysconfig.get_config_var('Py_ENABLE_SHARED') or 0);print(sys.executable)"]
    if root != "/":
        cmd = ["chroot", root] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"install-pythons: {exe} in {root} does not run: {out.stderr.strip()}")
    version, shared, executable = out.stdout.split()
    return version, shared == "1", executable
def add(name, root, exe, origin):
    version, shared, executable = probe(root, exe)
    entries.append({"name": name, "version": version, "root": root, "executable": executable,
                    "shared": shared, "origin": origin})
for suite, exes in (("bullseye", ["python3.9"]), ("trixie", ["python3.13"]),
                    ("sid", ["python3.13", "python3.14", "python3.15"])):
    for exe in exes:
        add(f"{suite}-{exe}", os.path.join(base, suite), f"/usr/bin/{exe}", f"debian {suite}")
seen = set()
add("host-python3.11", "/", "/usr/bin/python3.11", "debian bookworm (host)")
seen.add(os.path.realpath("/usr/bin/python3.11"))
for d in os.environ.get("PATH", "").split(":"):
    if not os.path.isdir(d):
        continue
    for f in sorted(os.listdir(d)):
        if not re.fullmatch(r"python3\.\d+", f):
            continue
        p = os.path.join(d, f)
        if "/shims/" in p:          # pyenv shims are scripts; resolve the real binary
            continue
        real = os.path.realpath(p)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        add(f"path-{f}-{len(seen)}", "/", real, f"PATH {d}")
# pyenv's interpreters sit behind shims: list them by their real location.
pyenv = os.path.expanduser("~/.pyenv/versions")
if os.path.isdir(pyenv):
    for v in sorted(os.listdir(pyenv)):
        for f in sorted(os.listdir(os.path.join(pyenv, v, "bin"))):
            p = os.path.realpath(os.path.join(pyenv, v, "bin", f))
            if re.fullmatch(r"python3\.\d+", f) and p not in seen:
                seen.add(p)
                add(f"pyenv-{v}", "/", p, "pyenv")
with open(os.path.join(base, "manifest.json"), "w") as fh:
    json.dump({"interpreters": entries}, fh, indent=1)
for e in entries:
    print(f"install-pythons: {e['name']:24} {e['version']:8} {'shared' if e['shared'] else 'static'} {e['root']}{e['executable'] if e['root']=='/' else e['executable']}", file=sys.stderr)
PY
echo "$BASE/manifest.json"
