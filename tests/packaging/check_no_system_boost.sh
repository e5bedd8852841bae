#!/usr/bin/env bash
# A machine without Debian's Boost: `pip wheel .` and `pip install` of the wheel, in a fresh
# venv, with the system's /usr/include/boost hidden (a private mount namespace with an empty
# tmpfs over it), take Boost.Interprocess from PyPI's boost-headers; the package then imports
# and a message goes through a shared-memory channel. Needs root (unshare -m) and PyPI.
#   tests/packaging/check_no_system_boost.sh [PYTHON]      (default: python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${1:-python3}

if [ "${MEMCHANNEL_NO_BOOST_NS:-}" != 1 ]; then
  exec unshare --mount --propagation private env MEMCHANNEL_NO_BOOST_NS=1 bash "$0" "$@"
fi

if [ -d /usr/include/boost ]; then
  mount -t tmpfs -o size=1m tmpfs /usr/include/boost
fi
if [ -e /usr/include/boost/interprocess/managed_shared_memory.hpp ]; then
  echo "FAIL: the system's Boost headers are still visible" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A fresh checkout: tracked and new files, no build/ or venv.
mkdir "$work/src"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$work/src" -xf -

"$PYTHON" -m venv "$work/venv"
# Boost found nowhere else: no CMake config or include path from the environment.
unset BOOST_ROOT Boost_ROOT Boost_DIR CPATH CPLUS_INCLUDE_PATH CMAKE_PREFIX_PATH || true
if ! "$work/venv/bin/pip" wheel -v --no-deps --config-settings=build.verbose=true -w "$work/dist" "$work/src" > "$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  echo "FAIL: pip wheel" >&2
  exit 1
fi
if ! grep -q "headers from PyPI's boost-headers" "$work/build.log"; then
  echo "FAIL: the build did not take the headers of boost-headers" >&2
  exit 1
fi
grep -q -- "-Werror" "$work/build.log" && { echo "FAIL: the pip build compiled with -Werror" >&2; exit 1; }
grep -o "Boost [0-9.]* headers from PyPI's boost-headers" "$work/build.log"
wheel=$(ls "$work"/dist/memchannel-*.whl)
echo "built $(basename "$wheel")"
"$work/venv/bin/pip" install -q "$wheel"

cd "$work"
"$work/venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
import memchannel as mc

names = zipfile.ZipFile(sys.argv[1]).namelist()
for required in ("memchannel/py.typed", "memchannel/_memchannel.pyi"):
    assert required in names, f"{required} missing from the wheel"
ch = mc.Channel()  # backend="shm": a Boost.Interprocess segment
ch.send(b"no system boost")
with ch.recv() as buf:
    got = bytes(buf)
assert got == b"no system boost", got
print(f"memchannel {mc.__version__} from {mc.__file__}: shm send/recv ok")
PY
echo "OK: built, installed and used without the system's Boost headers"
