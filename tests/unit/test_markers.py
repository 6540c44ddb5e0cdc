"""Each test folder is a marker too (tests/conftest.py), so a tier runs by itself with -m."""

import tomllib
from pathlib import Path

from tests.conftest import TIERS, pytest_collection_modifyitems

ROOT = Path(__file__).parents[2]


class Collected:
    """What the hook reads and changes of a collected test: its file, and its markers."""

    def __init__(self, path: str) -> None:
        self.path = ROOT / path
        self.markers: list[str] = []

    def add_marker(self, marker: str) -> None:
        self.markers.append(marker)


def test_each_test_is_marked_with_its_folder() -> None:
    items = [Collected(f"tests/{tier}/test_x.py") for tier in TIERS] + [Collected("tests/test_top.py")]
    pytest_collection_modifyitems(items)  # type: ignore[arg-type]
    assert [item.markers for item in items] == [[tier] for tier in TIERS] + [[]]


def test_the_tier_markers_are_registered() -> None:
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert {marker.split(":")[0] for marker in markers} >= set(TIERS)
