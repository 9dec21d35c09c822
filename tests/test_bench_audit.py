"""Smoke test of bench/audit.py: it runs at small settings and prints the JSON it promises."""
from __future__ import annotations

import importlib.util
import json

from conftest import ROOT


def test_bench_audit_runs_and_prints_json(capsys):
    spec = importlib.util.spec_from_file_location("bench_audit", ROOT / "bench" / "audit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--n", "240", "--dim", "24", "--n-bootstrap", "20", "--cv", "3", "--map", "none",
                       "--no-naive"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 240 and result["audit_seconds"] > 0 and "naive_seconds" not in result
    assert result["flagged_shortcuts"] == ["view"]  # the planted shortcut
    assert set(result["encoded"]) == {"sex", "age", "view", "site"}
    assert result["goals"] == {"audit_under_60s": True}
