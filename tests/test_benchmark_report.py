"""Benchmark results say what produced them, and a --quick run never replaces the published numbers."""

import argparse
import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@pytest.fixture
def report(tmp_path, monkeypatch):
    from benchmarks import _report

    monkeypatch.setattr(_report, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(_report, "QUICK", tmp_path / "results" / "quick")
    monkeypatch.setattr(_report, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr("sys.argv", [str(BENCH / "x.py"), "--seeds", "0,1", "--quick"])
    return _report


def test_a_section_records_command_arguments_commit_and_versions(report):
    path = report.write_section("x", "X", "body", argparse.Namespace(seeds="0,1", jobs=2, quick=False))
    text = path.read_text()
    assert path == report.RESULTS / "x.md"
    assert "Reproduce: `python benchmarks/x.py --seeds 0,1 --quick`" in text
    assert "Arguments: `jobs=2`, `quick=False`, `seeds='0,1'`" in text
    assert re.search(r"Code: git [0-9a-f]{40}", text)
    for name in ("torch", "Lightning", "Optuna", "ONNX Runtime"):
        assert re.search(rf"Versions: .*\b{name} \d", text), name
    assert text.rstrip().endswith("body") and "X" in report.BENCHMARKS_MD.read_text()


def test_a_quick_run_writes_elsewhere_and_leaves_benchmarks_md_alone(report):
    report.RESULTS.mkdir()
    (report.RESULTS / "x.md").write_text("published\n")
    path = report.write_section("x", "X", "smoke", argparse.Namespace(quick=True))
    assert path == report.QUICK / "x.md" and "not a published result" in path.read_text()
    assert (report.RESULTS / "x.md").read_text() == "published\n"
    assert not report.BENCHMARKS_MD.exists()


def test_quick_results_are_not_committed():
    out = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "benchmarks/results/quick/x.md"])
    assert out.returncode == 0


def test_every_benchmark_passes_its_arguments_and_every_published_section_has_provenance():
    for script in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_section":
                assert len(node.args) + len(node.keywords) >= 4, f"{script.name}:{node.lineno} records no arguments"
    for section in sorted((BENCH / "results").glob("*.md")):
        head = section.read_text().split("\n\n", 2)[1]
        assert head.startswith("Reproduce: `python benchmarks/"), section.name
        assert "Versions:" in head or "recorded before provenance was kept" in head, section.name
