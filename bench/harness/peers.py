"""Install the peer libraries into the running interpreter's environment.

``python -m bench.harness --install-peers`` or :func:`install_peers`. Each package is
installed on its own so one failure does not stop the others; failures are remembered
in ``<out>/peer-install.json`` and become part of the skip reason of the peer's rows.
"""

import json
import os
import subprocess
import sys

# distribution -> the transports it enables
PEERS = {
    "pyzmq": ["pyzmq"],
    "faster-fifo": ["faster-fifo"],
    "iceoryx2": ["iceoryx2"],
    "interpreters-pep-734": ["interpqueue-bytes", "interpqueue-memoryview"],
    "numpy": [],          # memcpy baseline (falls back to memoryview copies without it)
    "matplotlib": [],     # plots (skipped without it)
}

STATUS_FILE = "peer-install.json"


def install_peers(out_dir=None, packages=None, quiet=True):
    """pip-install each peer; returns {distribution: None on success | failure reason}."""
    results = {}
    for dist in packages or PEERS:
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", dist]
        if quiet:
            cmd.insert(4, "-q")
        print(f"installing {dist} ...", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            results[dist] = f"pip install {dist} failed: {exc}"
            continue
        if proc.returncode == 0:
            results[dist] = None
        else:
            tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines()
                    if ln.strip() and not ln.startswith("WARNING")]
            results[dist] = (f"pip install {dist} failed (exit {proc.returncode}): "
                             + (tail[-1] if tail else "no output"))
        print(f"  {dist}: {results[dist] or 'ok'}", file=sys.stderr, flush=True)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, STATUS_FILE), "w") as f:
            json.dump({"python": sys.executable, "results": results}, f, indent=2)
    return results


def install_failures(out_dir):
    """Failures recorded by the last --install-peers into out_dir: {distribution: reason}."""
    try:
        with open(os.path.join(out_dir, STATUS_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if data.get("python") != sys.executable:
        return {}
    return {k: v for k, v in data.get("results", {}).items() if v}
