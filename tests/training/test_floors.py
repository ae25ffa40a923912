"""The declared dependency floors are the versions CI tests at, and this environment meets them."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _floors() -> dict[str, Version]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for line in deps:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(lows) == 1, f"{line}: every dependency needs exactly one '>=' floor"
        floors[req.name.lower()] = lows[0]
    return floors


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "min-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, pin = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
            pins[name.lower()] = Version(pin)
    return pins


def test_min_versions_file_pins_every_floor() -> None:
    assert _pins() == _floors()


def test_this_environment_meets_the_floors() -> None:
    low = {n: (version(n), f) for n, f in _floors().items() if Version(version(n)) < f}
    assert not low, f"installed below the declared floor: {low}"
