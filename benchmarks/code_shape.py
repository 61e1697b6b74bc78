"""Largest functions and modules of a package: the house-style numbers (functions <= ~60 lines,
modules <= ~300), measured with `ast` so decorators and docstrings count as written.

    python benchmarks/code_shape.py [--root pipeline] [--out benchmarks/results/code_shape.json]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

from _common import write_result

REPO = Path(__file__).resolve().parents[1]


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def measure(root: Path, *, function_limit: int, module_limit: int) -> dict:
    functions, modules = [], []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        name = _shown(path)
        modules.append({"module": name, "lines": len(source.splitlines())})
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                functions.append({"function": f"{name}:{node.name}", "lines": node.end_lineno - first + 1})
    functions.sort(key=lambda f: -f["lines"])
    modules.sort(key=lambda m: -m["lines"])
    return {
        "root": _shown(root), "function_limit": function_limit, "module_limit": module_limit,
        "largest_function": functions[0], "largest_module": modules[0],
        "functions_over_limit": [f for f in functions if f["lines"] > function_limit],
        "modules_over_limit": [m for m in modules if m["lines"] > module_limit],
        "functions": len(functions), "modules": len(modules),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(REPO / "pipeline"))
    parser.add_argument("--function-limit", type=int, default=60)
    parser.add_argument("--module-limit", type=int, default=300)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "code_shape.json"))
    args = parser.parse_args()
    result = measure(Path(args.root).resolve(), function_limit=args.function_limit, module_limit=args.module_limit)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
