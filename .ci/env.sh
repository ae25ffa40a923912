#!/usr/bin/env bash
# Build (or reuse) the test venv, keyed by the hash of the files that define the environment.
# Prints the venv path on its last line. Used by .ci/run; developers can run it too.
set -euo pipefail
cd "$(dirname "$0")/.."
# key: the dependency lists of pyproject.toml plus the constraints (layout edits don't rebuild)
deps_of() { python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(sys.version_info[:2], p["dependencies"], p["optional-dependencies"])'; }
key=$( (deps_of; cat .ci/constraints.txt) | sha256sum | cut -c1-16)
cache="${ONETOWER_CI_CACHE:-$HOME/.cache/onetower-ci}"
venv="$cache/venv-$key"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "== building environment $venv" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip setuptools wheel >&2
    # Dependencies only (the cached part); the project itself is reinstalled by every CI run.
    deps=$("$venv/bin/python" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["dependencies"] + p["optional-dependencies"]["dev"]))')
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet -c .ci/constraints.txt $deps >&2
    "$venv/bin/python" -c "import torch, torchvision, timm, transformers, accelerate, datasets" >&2
    touch "$venv/.complete"
fi
echo "$venv"
