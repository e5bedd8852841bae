"""Every runnable example in docs/examples/ runs and prints what its guide says it prints.

Convention for docs/examples/*.py (each file is discovered; nothing to register):
* the script runs as ``python docs/examples/NAME.py`` (no arguments), in a fresh temporary
  working directory, and exits with status 0 within the timeout;
* it states its output in comments of the form ``# expect: TEXT``; each TEXT must appear in
  a line of its standard output, in the order of the comments (substring match, so lines
  may carry numbers that vary, such as timings). At least one ``# expect:`` is required.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
EXPECT = re.compile(r"^\s*#\s*expect:\s?(.*?)\s*$", re.MULTILINE)
TIMEOUT = 180


def test_examples_directory_is_not_empty():
    assert EXAMPLES, f"no examples found in {EXAMPLES_DIR}"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_and_prints_what_it_promises(script, tmp_path):
    expected = EXPECT.findall(script.read_text(encoding="utf-8"))
    assert expected, f"{script.name}: add '# expect: <text>' comments naming the output it prints"
    completed = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ),
                               capture_output=True, text=True, timeout=TIMEOUT)
    assert completed.returncode == 0, (
        f"{script.name} exited with {completed.returncode}\n--- stdout\n{completed.stdout}"
        f"\n--- stderr\n{completed.stderr}")
    lines = completed.stdout.splitlines()
    position = 0
    for text in expected:
        while position < len(lines) and text not in lines[position]:
            position += 1
        assert position < len(lines), (
            f"{script.name}: expected a line containing {text!r} (in order) in its output:\n"
            f"{completed.stdout}")
        position += 1
