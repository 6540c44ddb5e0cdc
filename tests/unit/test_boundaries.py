"""The folders are the service boundaries: no service imports another's code, and libs/ and
proto/ import no service (services meet only in proto/ and on the wire)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_service_imports_another_and_shared_code_imports_none() -> None:
    services = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())
    assert {"ingress", "quota", "keys", "gateway", "billing", "simulator"} <= set(services)
    crossings = []
    for folder in ["libs", "proto", *(f"services/{s}" for s in services)]:
        own = folder.split("/")[-1]
        for path in (ROOT / folder).rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and (folder in ("libs", "proto") or parts[1] != own):
                    crossings.append(f"{path.relative_to(ROOT)} imports {module}")
    assert crossings == []


def test_the_free_plan_and_the_settings_are_named_in_one_place() -> None:
    """The plan the code decides on ("free": refunds drop to it, the console hides it) is
    libs.pricing.catalog.FREE, never the string again; FLOWPLAN_* is read by libs/settings.py only."""
    free, environ = [], []
    for folder in ("libs", "proto", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value == "free":
                    free.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:  # .get(…)
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and str(first.value).startswith("FLOWPLAN_"):
                        environ.append(f"{path.relative_to(ROOT)}:{node.lineno} {first.value}")
    assert free == ["libs/pricing/catalog.py:78"]
    assert [e for e in environ if not e.startswith("libs/settings.py")] == []
