"""``umec --version``, ``--debug`` (tracebacks of errors otherwise shown as one line) and the
library's messages going through :mod:`logging`. No data involved except a missing run path."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import umec_torchrec
from umec_torchrec import cli
from umec_torchrec.log import LOGGER, say, warn


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"umec {umec_torchrec.__version__}"


@pytest.mark.parametrize("where", ["root", "command", "env"])
def test_debug_prints_the_traceback_above_the_one_line(tmp_path, capsys, monkeypatch, where):
    missing = str(tmp_path / "nope")
    argv = ["evaluate", missing]
    capsys.readouterr()
    assert cli.main(argv) == 2
    plain = capsys.readouterr().err.strip().splitlines()
    assert len(plain) == 1 and plain[0].startswith("umec: error: ") and missing in plain[0]
    if where == "root":
        argv = ["--debug", *argv]
    elif where == "command":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("UMEC_DEBUG", "1")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and err[-1] == plain[0], err
    assert any("umec_torchrec" in ln and ".py" in ln for ln in err[1:-1]), err  # where it was raised


def test_library_messages_go_through_logging():
    got = []

    class Keep(logging.Handler):
        def emit(self, record):
            got.append((record.name, record.levelno, record.getMessage()))

    h = Keep()
    LOGGER.addHandler(h)
    try:
        say(None, "a progress line")
        warn(None, "a warning")
        say(type("Ctx", (), {"rank": 1})(), "not on rank 1")
    finally:
        LOGGER.removeHandler(h)
    assert got == [("umec_torchrec", logging.INFO, "a progress line"), ("umec_torchrec", logging.WARNING, "a warning")]


def test_console_prints_bare_lines_and_prefixed_warnings():
    """In a fresh interpreter: the command line's handler puts INFO on stdout as is and
    warnings on stderr as ``umec: warning: ...``; without it the library prints no INFO."""
    code = ("from umec_torchrec.log import console, say, warn; say(None, 'quiet'); "
            "console('umec'); say(None, 'hello'); warn(None, 'careful')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["hello"] and r.stderr.splitlines() == ["umec: warning: careful"]
