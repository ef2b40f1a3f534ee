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
# python3.11-dbg: Debian's debug build (Py_DEBUG), a test interpreter of its own.
need_host_pkg debootstrap gcc libpython3.11-dev python3.11-dev python3.11-dbg

# suite  packages
ROOTS=(
  "bullseye python3.9 python3.9-dev"
  "trixie python3.13 python3.13-dev"
  "sid python3.13 python3.13-dev python3.14 python3.14-dev python3.14-dbg python3.14-nopie python3.15 python3.15-dev"
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

# Static, stripped interpreters: the python-build-standalone shape (what uv installs) that
# "failed to find python version" reports come from. A one-line main around Py_BytesMain is
# linked against each Debian libpython3.X.a with -no-pie, then stripped of every symbol
# table but the dynamic one. Linked on the host with --sysroot so the roots need no gcc.
# Extension modules in lib-dynload need the C API exported (-E); _PyRuntime is hidden from
# that export (except in one build) so the section (.PyRuntime, 3.11+) and scan (3.9)
# discovery paths are what finds it, as in a stripped build without -E.
#   build_static ROOT MINOR NAME EXPORT_RUNTIME
# in_root ROOT PATH: PATH (inside ROOT) with its symlinks followed inside ROOT.
in_root() {
    local root=$1 f=$2 t
    while [ -L "$f" ]; do
        t=$(readlink "$f")
        case $t in
            /*) f="$root$t" ;;
            *) f="$(dirname "$f")/$t" ;;
        esac
    done
    printf '%s\n' "$f"
}
STATIC_MAIN='#include <Python.h>
int main(int argc, char **argv) { return Py_BytesMain(argc, argv); }'
build_static() {
    local root=$1 minor=$2 name=$3 export_runtime=$4
    local sysroot=${root%/} out_dir="$root/opt/vizattach-static/$name" libdir="$root/usr/lib/x86_64-linux-gnu"
    local stamp="$minor export=$export_runtime v2"
    [ -n "$sysroot" ] || sysroot=/
    if [ -x "$out_dir/python" ] && [ "$(cat "$out_dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    mkdir -p "$out_dir"
    local work
    work=$(mktemp -d)
    printf '%s\n' "$STATIC_MAIN" >"$work/main.c"
    if [ "$export_runtime" = yes ]; then
        printf '{ global: *; };\n' >"$work/exports.ver"
    else
        printf '{ global: *; local: _PyRuntime; };\n' >"$work/exports.ver"
    fi
    local libs=(-ldl -lm -lpthread -lutil -lz -lexpat)
    # 3.14+ builds _zstd in; the roots have the runtime library but not its -dev link.
    if nm "$libdir/libpython$minor.a" 2>/dev/null | grep ' U ZSTD_' >/dev/null; then
        libs+=("$libdir/libzstd.so.1")
    fi
    # A root's lib*.so dev links and linker scripts name absolute paths (bullseye's point
    # at /lib/...), which would resolve on the host. Copies with the root's own files
    # spelled out come first on -L.
    mkdir -p "$work/ld"
    local lib dev word
    for lib in c m dl pthread util z expat; do
        dev="$libdir/lib$lib.so"
        [ -e "$dev" ] || [ -L "$dev" ] || continue
        if [ ! -L "$dev" ] && grep -q '^GROUP' "$dev"; then
            for word in $(grep '^GROUP' "$dev" | grep -o '/[^ )]*'); do
                in_root "$root" "$root$word"
            done | { printf 'GROUP ( '; tr '\n' ' '; printf ')\n'; } >"$work/ld/lib$lib.so"
        else
            ln -s "$(in_root "$root" "$dev")" "$work/ld/lib$lib.so"
        fi
    done
    local link=(gcc --sysroot="$sysroot" -B"$libdir" -L"$work/ld" -L"$libdir" -no-pie -O1 -I"$root/usr/include/python$minor"
        "$work/main.c" -o "$work/python" -Wl,-E -Wl,--version-script="$work/exports.ver"
        -Wl,--whole-archive "$libdir/libpython$minor.a" -Wl,--no-whole-archive "${libs[@]}")
    # Debian's libpython3.12+.a leaves out the HACL* hash objects its _md5/_sha*/_blake2
    # modules call (the shared library has them). The tests never hash without OpenSSL,
    # so those calls abort with a message rather than block the link.
    if ! "${link[@]}" 2>"$work/link.log"; then
        local missing
        missing=$(grep -o "undefined reference to \`[^']*'" "$work/link.log" | sed "s/.*\`//; s/'$//" | sort -u || true)
        if [ -z "$missing" ] || echo "$missing" | grep -qv 'Hacl_'; then
            echo "install-pythons: linking a static python$minor failed:" >&2
            tail -20 "$work/link.log" >&2
            rm -rf "$work"
            return 1
        fi
        {
            echo '#include <stdio.h>'
            echo '#include <stdlib.h>'
            for sym in $missing; do
                echo "void $sym(void) { fputs(\"static test python: $sym is not linked in\\n\", stderr); abort(); }"
            done
        } >"$work/hacl_missing.c"
        "${link[@]}" "$work/hacl_missing.c" 2>"$work/link.log" || {
            echo "install-pythons: linking a static python$minor failed:" >&2
            tail -20 "$work/link.log" >&2
            rm -rf "$work"
            return 1
        }
    fi
    strip --strip-all "$work/python"
    mv "$work/python" "$out_dir/python"
    echo "$stamp" >"$out_dir/.stamp"
    rm -rf "$work"
}
build_static "$BASE/bullseye" 3.9 3.9 no
build_static / 3.11 3.11 no
build_static "$BASE/trixie" 3.13 3.13 yes
build_static "$BASE/sid" 3.14 3.14 no
build_static "$BASE/sid" 3.15 3.15 no

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
def add(name, root, exe, origin, static=False):
    version, shared, executable = probe(root, exe)
    shared = shared and not static   # a static build still reads its root's sysconfig
    entries.append({"name": name, "version": version, "root": root, "executable": executable,
                    "shared": shared, "origin": origin})
for suite, exes in (("bullseye", ["python3.9"]), ("trixie", ["python3.13"]),
                    ("sid", ["python3.13", "python3.14", "python3.15"])):
    for exe in exes:
        add(f"{suite}-{exe}", os.path.join(base, suite), f"/usr/bin/{exe}", f"debian {suite}")
# python3.14-nopie diverts /usr/bin/python3.14 (so sid-python3.14 above is the -nopie
# build) and keeps the regular executable as python3.14-pie.
add("sid-python3.14-pie", os.path.join(base, "sid"), "/usr/bin/python3.14-pie", "debian sid, the executable python3.14-nopie diverts")
add("sid-python3.14-dbg", os.path.join(base, "sid"), "/usr/bin/python3.14d", "debian sid, debug build")
# The static, stripped builds linked above (build_static).
for suite, minor in (("bullseye", "3.9"), ("trixie", "3.13"), ("sid", "3.14"), ("sid", "3.15")):
    add(f"{suite}-static-stripped-{minor}", os.path.join(base, suite), f"/opt/vizattach-static/{minor}/python",
        f"debian {suite} libpython{minor}.a, static, stripped", static=True)
seen = set()
add("host-python3.11", "/", "/usr/bin/python3.11", "debian bookworm (host)")
seen.add(os.path.realpath("/usr/bin/python3.11"))
add("host-python3.11-dbg", "/", "/usr/bin/python3.11d", "debian bookworm (host), debug build")
add("host-static-stripped-3.11", "/", "/opt/vizattach-static/3.11/python",
    "debian bookworm libpython3.11.a, static, stripped", static=True)
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
