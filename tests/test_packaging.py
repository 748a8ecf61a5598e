"""The README's two commands are the ones CI runs, and the package ships its data."""

import os
import re

import qe4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as f:
        text = f.read()
    return [m.strip() for m in re.findall(r"^    (python3 -m venv .*)$", text, flags=re.M)]


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    demo, tests = _readme_commands()
    assert demo.endswith("qe4 demo")
    assert "pytest" in tests
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read().splitlines()
    assert tests in ci


def test_bundled_demo_table_ships_with_the_package():
    from qe4.datasets import load_glove_top20k
    table, words = load_glove_top20k()
    assert table.shape == (20000, 50) and table.dtype.name == "float32"
    assert words[:3] == ["the", ",", "."] and len(words) == 20000
    assert os.path.dirname(qe4.__file__).endswith("qe4")
