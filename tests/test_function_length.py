"""The pipelines stay readable (issue 22): no function in ``pipelines/`` reaches 60 lines, signature and
docstring included. A longer one wants a stage or helper of its own."""

import ast
from pathlib import Path

import arstudio

PIPELINES = Path(arstudio.__file__).parent / "pipelines"
LIMIT = 60


def function_lengths(folder: Path) -> list[tuple[int, str]]:
    """(lines from ``def`` to the last line, "file:name") of every function and method under ``folder``."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((node.end_lineno - node.lineno + 1, f"{path.name}:{node.name}"))
    return found


def test_no_pipeline_function_reaches_60_lines():
    lengths = function_lengths(PIPELINES)
    assert len(lengths) > 20  # the walk sees the pipelines' functions
    too_long = sorted(item for item in lengths if item[0] >= LIMIT)
    assert not too_long, f"functions of {LIMIT}+ lines in pipelines/ (split them): {too_long}"


def test_the_measure_counts_a_whole_function(tmp_path):
    (tmp_path / "m.py").write_text(
        "def f(x):\n    y = x\n\n    return y\n\n\nclass A:\n    def g(self):\n        pass\n"
    )
    assert sorted(function_lengths(tmp_path)) == [(2, "m.py:g"), (4, "m.py:f")]
