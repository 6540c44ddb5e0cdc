"""Each test folder is a marker too (tests/conftest.py), so a tier runs by itself with -m."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def collected(marker: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", marker,
         "tests/unit/test_markers.py", "tests/component/test_projections.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return {line.split("/")[1] for line in result.stdout.splitlines() if line.startswith("tests/")}


def test_each_tier_is_selected_by_its_marker() -> None:
    assert collected("component") == {"component"}
    assert collected("unit") == {"unit"}
    assert collected("unit or component") == {"unit", "component"}
    assert collected("e2e") == set()
