"""The package's shape: public functions take at most ten parameters, and no import cycle
joins the group and reports packages."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import ketabids

PACKAGE_DIR = Path(ketabids.__file__).parent
MAX_PARAMETERS = 10
# functions allowed over MAX_PARAMETERS by name (none: group parameters in a frozen config)
ALLOWED_OVER_MAX: set[str] = set()


def _modules():
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="ketabids."):
        if not info.name.endswith(".__main__"):
            yield info.name


def _public_callables(module):
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj
        elif inspect.isclass(obj) and not dataclasses.is_dataclass(obj):
            for attr, member in vars(obj).items():
                if inspect.isfunction(member) and not attr.startswith("_"):
                    yield f"{module.__name__}.{name}.{attr}", member


def _parameter_count(func) -> int:
    params = inspect.signature(func).parameters.values()
    return sum(1 for p in params if p.name not in ("self", "cls")
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def test_every_module_imports():
    for name in _modules():
        importlib.import_module(name)


def test_no_public_function_takes_more_than_ten_parameters():
    over = {}
    for module_name in _modules():
        module = importlib.import_module(module_name)
        for qualname, func in _public_callables(module):
            count = _parameter_count(func)
            if count > MAX_PARAMETERS and qualname not in ALLOWED_OVER_MAX:
                over[qualname] = count
    assert not over, f"public functions over {MAX_PARAMETERS} parameters: {over}"


def test_the_parameter_check_sees_an_oversized_function():
    def wide(a, b, c, d, e, f, g, h, i, j, k, *args, **kwargs):
        return a

    assert _parameter_count(wide) == 11


def _imported_modules(path: Path, module_name: str) -> set[str]:
    """Every ketabids module ``path`` imports, at module level or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("ketabids.")}


def _package_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Which of ``packages`` each of them imports (any module of one importing any of the
    other's)."""
    graph = {package: set() for package in packages}
    for path in PACKAGE_DIR.rglob("*.py"):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        module_name = ".".join(parts)
        source = next((p for p in packages if module_name == p
                       or module_name.startswith(p + ".")), None)
        if source is None:
            continue
        for imported in _imported_modules(path, module_name):
            for target in packages:
                if target != source and (imported == target
                                         or imported.startswith(target + ".")):
                    graph[source].add(target)
    return graph


def test_group_and_reports_do_not_import_each_other_both_ways():
    graph = _package_graph(("ketabids.group", "ketabids.reports"))
    assert not ("ketabids.reports" in graph["ketabids.group"]
                and "ketabids.group" in graph["ketabids.reports"]), graph


def test_the_import_graph_sees_a_function_level_import(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("def f():\n    from ketabids.reports import group\n"
                      "from . import labels\n")
    assert _imported_modules(module, "ketabids.group.mod") == {
        "ketabids.reports", "ketabids.reports.group", "ketabids.group",
        "ketabids.group.labels"}


def test_log_lines_are_captured_and_the_logger_restored():
    import logging

    from tests.logcapture import ketabids_log_lines

    logger = logging.getLogger("ketabids")
    handlers, level = list(logger.handlers), logger.level
    with ketabids_log_lines() as lines:
        logger.info("kept %d", 1)
        logger.debug("below the level")
    logger.info("after the block")
    assert lines == ["kept 1"]
    assert logger.handlers == handlers and logger.level == level
