"""Digest of the code a stage runs: its module and every `pipeline` module it can import.

One function serves both sides of the rerun policy: the workflow passes it as a rule
parameter (so editing any module a stage uses reruns that stage and its dependants), and
`store.provenance` records it in every artifact (so recipe digests, and with them resumable
checkpoints and caches, change when the code that made an input changed). Imports are read
from the source (function-level ones too), never executed; only the standard library is used
here, so the workflow can call it before any heavy package is importable.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "pipeline"
# the command-line dispatcher turns errors into lines; it makes no artifact, so it is no stage's code
DISPATCHER = "pipeline.__main__"
ROOT = Path(__file__).resolve().parent  # the package folder this file was imported from


class CodeDigestError(Exception):
    """A stage or module whose source cannot be found or parsed."""


def _module_file(name: str) -> Path | None:
    """The source file of `pipeline.x.y` (a module or a package's __init__), if it exists."""
    parts = name.split(".")[1:]
    if not parts:
        return ROOT / "__init__.py"
    rel = Path(*parts)
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(name: str, source: Path) -> set[str]:
    """`pipeline` modules that `source` (module `name`) imports anywhere, with their parent packages."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (OSError, SyntaxError) as exc:
        raise CodeDigestError(f"cannot read the code of {name} ({source}): {exc}") from None
    package = name if source.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pipeline import store`
    modules = set()
    for module in found:
        if module != PACKAGE and not module.startswith(PACKAGE + "."):
            continue
        parts = module.split(".")
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # parents run their __init__
    return {m for m in modules if m != DISPATCHER and _module_file(m) is not None}


@functools.lru_cache(maxsize=None)
def module_closure(name: str) -> tuple[Path, ...]:
    """Source files of module `name` and of every `pipeline` module it imports, transitively."""
    if _module_file(name) is None:
        raise CodeDigestError(f"module {name} not found under {ROOT}")
    seen: dict[str, Path] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        path = _module_file(current)
        seen[current] = path
        todo.extend(_imported_modules(current, path) - seen.keys())
    return tuple(sorted(seen.values()))


@functools.lru_cache(maxsize=None)
def module_digest(name: str) -> str:
    """16 hex digits over the relative paths and bytes of `module_closure(name)`."""
    digest = hashlib.sha256()
    for path in module_closure(name):
        digest.update(f"{path.relative_to(ROOT.parent).as_posix()}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def stage_module(stage: str) -> str:
    """The module behind `python -m pipeline <stage>` (the registry in pipeline/__main__.py)."""
    from pipeline.__main__ import STAGES

    if stage not in STAGES:
        raise CodeDigestError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return STAGES[stage][0]


def stage_digest(stage: str) -> str:
    """Digest of everything `python -m pipeline <stage>` can run."""
    return module_digest(stage_module(stage))
