"""The library's parallel defaults from any kind of script: a file without an
``if __name__ == "__main__"`` guard, a module run with ``-m``, a script read from stdin,
and an interactive session. Each runs in a fresh interpreter, as a user would."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

# No guard: the top level is the work. It must run once, in the parent only; results
# are compared with the same computation in the calling process.
WORK = textwrap.dedent(
    """
    import numpy as np
    from psi import Key, encode_identifier, hash_to_curve
    print("top level ran")
    msgs = [encode_identifier("email", f"user{i}@example.com") for i in range(3000)]
    points = hash_to_curve(msgs)
    assert np.array_equal(points, hash_to_curve(msgs, workers=1))
    key = Key.generate()
    assert np.array_equal(key.apply(points), key.apply(points, workers=1))
    assert np.array_equal(key.apply(points, workers=2), key.apply(points, workers=1))
    print("all equal")
    """
)


def run(args, cwd, stdin=None) -> str:
    out = subprocess.run(
        [sys.executable, *args], input=stdin, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Error" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    return out.stdout


def test_script_without_guard(tmp_path):
    (tmp_path / "work.py").write_text(WORK)
    out = run(["work.py"], tmp_path)
    assert out.count("top level ran") == 1 and "all equal" in out


def test_module_without_guard(tmp_path):
    (tmp_path / "work_module.py").write_text(WORK)
    out = run(["-m", "work_module"], tmp_path)
    assert out.count("top level ran") == 1 and "all equal" in out


def test_script_from_stdin(tmp_path):
    out = run(["-"], tmp_path, stdin=WORK)
    assert out.count("top level ran") == 1 and "all equal" in out


def test_interactive_session(tmp_path):
    # what a REPL or a notebook kernel does: statements executed one at a time in a
    # __main__ that has no file
    out = run(["-i", "-q"], tmp_path, stdin=WORK + "\nprint('session continues')\n")
    assert out.count("top level ran") == 1 and "all equal" in out and "session continues" in out


def test_interactive_console(tmp_path):
    driver = f"import code\ncode.InteractiveConsole().runcode(compile({WORK!r}, '<console>', 'exec'))\n"
    out = run(["-c", driver], tmp_path)
    assert out.count("top level ran") == 1 and "all equal" in out
