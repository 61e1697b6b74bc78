"""ARCHITECTURE.md stays true: every pipeline/ module, every stage and every rule is in it, and
every module path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.__main__ import STAGES

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "ARCHITECTURE.md").read_text()
RULE = re.compile(r"^(?:rule (\w+):|use rule \w+ as (\w+) with:)", re.MULTILINE)


def _modules() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / "pipeline").rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_every_module_has_a_line():
    missing = [m for m in _modules() if not re.search(rf"^- `{re.escape(m)}` — \S", DOC, re.MULTILINE)]
    assert not missing, f"ARCHITECTURE.md has no line for: {missing}"


def test_every_module_it_names_exists():
    named = set(re.findall(r"`(pipeline/[\w/]+\.py)`", DOC))
    stale = sorted(named - set(_modules()))
    assert not stale, f"ARCHITECTURE.md names modules that do not exist: {stale}"


def test_every_stage_has_a_row_with_its_module():
    rows = [line for line in DOC.splitlines() if line.startswith("|")]
    missing = []
    for name, (module, _) in STAGES.items():
        path = module.replace(".", "/") + ".py"
        if not any(f"| `{name}` |" in row and f"`{path}`" in row for row in rows):
            missing.append(f"{name} ({path})")
    assert not missing, f"ARCHITECTURE.md's stage table lacks: {missing}"


def test_every_rule_is_in_the_stage_table():
    rules = {a or b for path in (REPO / "rules").glob("*.smk") for a, b in RULE.findall(path.read_text())}
    table = "\n".join(line for line in DOC.splitlines() if line.startswith("|"))
    missing = sorted(r for r in rules if f"`{r}`" not in table)
    assert not missing, f"ARCHITECTURE.md's stage table lacks the rules: {missing}"
