"""The CLI hides TensorFlow's start-up noise during a command, restores everything after, and
``--debug`` keeps the noise; importing the library changes nothing."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from cxr_embed.cli import _quiet, main
from cxr_embed.cli._quiet import quiet_tensorflow


@pytest.fixture
def noisy(tmp_path, monkeypatch):
    """Factory of packages that print to file descriptor 2 when imported, like TensorFlow's C++ logging."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str, fail: bool = False) -> str:
        pkg = tmp_path / name
        pkg.mkdir()
        body = ["import os, sys", f"os.write(2, b'C++ NOISE from {name}\\n')", f"print('py noise from {name}', file=sys.stderr)"]
        if fail:
            body.append("raise ImportError('broken install')")
        (pkg / "__init__.py").write_text("\n".join(body) + "\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return make


def test_import_noise_is_hidden_and_failures_are_not(noisy, capfd):
    __import__(noisy("loud_pkg"))
    assert "C++ NOISE from loud_pkg" in capfd.readouterr().err
    name = noisy("quiet_pkg")
    with quiet_tensorflow(modules=(name,)):
        __import__(name)
        print("the command's own output", file=sys.stderr)
    err = capfd.readouterr().err
    assert "NOISE" not in err and "noise" not in err and "the command's own output" in err
    assert sys.modules[name].__spec__.name == name
    broken = noisy("broken_pkg", fail=True)
    with pytest.raises(ImportError, match="broken install"), quiet_tensorflow(modules=(broken,)):
        __import__(broken)
    assert "C++ NOISE from broken_pkg" in capfd.readouterr().err    # shown after all: the import failed


def test_everything_is_restored(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    finders = list(sys.meta_path)
    levels = {n: logging.getLogger(n).level for n in ("tensorflow", "absl")}
    with quiet_tensorflow():
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
        assert logging.getLogger("tensorflow").level == logging.ERROR
        assert isinstance(sys.meta_path[0], _quiet._QuietFinder)
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and sys.meta_path == finders
    assert {n: logging.getLogger(n).level for n in levels} == levels
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")        # the user's own choice wins
    with quiet_tensorflow():
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    with quiet_tensorflow(False):
        assert sys.meta_path == finders


def test_main_is_quiet_unless_debug(monkeypatch, tmp_path, capsys):
    calls = []
    real = _quiet.quiet_tensorflow

    def spy(enabled=True, **kw):
        calls.append(enabled)
        return real(enabled, **kw)

    monkeypatch.setattr(_quiet, "quiet_tensorflow", spy)
    missing = str(tmp_path / "missing.csv")
    assert main(["manifest", missing]) == 2
    assert main(["--debug", "manifest", missing]) == 2
    assert calls == [True, False]
    capsys.readouterr()


def test_importing_the_library_and_the_cli_changes_nothing():
    code = ("import os, sys; n = len(sys.meta_path); import cxr_embed, cxr_embed.cli, cxr_embed.cli._quiet; "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), len(sys.meta_path) == n, 'tensorflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["None", "True", "False"]
