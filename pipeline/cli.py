"""What every stage's `run(args)` does, written once: options -> stage function -> one summary line.

`pipeline/__main__.py` parses a stage's options and turns the errors a user can fix (`UserError`,
a full disk) into one line; `run_stage` is the part in between. A stage's `run` is then one call:

    def run(args):
        run_stage(compute_geometry, args, names={"out_dir": "out"}, summary=json.dumps)
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Mapping


def set_threads(threads: int | None) -> None:
    """Pin torch's CPU threads; on a shared CPU, oversubscription slows small models many-fold."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def stage_kwargs(function: Callable, args, *, names: Mapping[str, str] | None = None,
                 values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of `function` from parsed options.

    Each parameter takes, in this order: `values[param]`; the option `names[param]`; the option of
    its own name; for `progress`, `not --no-progress` (or `not --quiet`). A parameter with none of
    these keeps its default; a required one without an option is a programming error (TypeError).
    """
    names, values, options = dict(names or {}), dict(values or {}), vars(args)
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(function).parameters.items():
        option = names.get(name, name)
        if name in values:
            kwargs[name] = values[name]
        elif option in options:
            kwargs[name] = options[option]
        elif name == "progress" and ("no_progress" in options or "quiet" in options):
            kwargs[name] = not (options.get("no_progress") or options.get("quiet"))
        elif param.default is inspect.Parameter.empty and param.kind is not param.VAR_KEYWORD:
            raise TypeError(f"{function.__name__}: no command-line option for its parameter {name!r}")
    return kwargs


def run_stage(function: Callable, args, *, names: Mapping[str, str] | None = None,
              values: Mapping[str, Any] | None = None, summary: Callable[[Any], str] | None = json.dumps) -> Any:
    """Pin threads (`--threads`), call `function` with the options (see `stage_kwargs`) and print
    `summary(result)` (one JSON line by default; None prints nothing). Returns the result."""
    set_threads(getattr(args, "threads", None))
    result = function(**stage_kwargs(function, args, names=names, values=values))
    if summary is not None:
        print(summary(result))
    return result
