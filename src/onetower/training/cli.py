"""Running a recipe from the command line: user errors become one clear line, not a trace."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from onetower.data import BadDataError
from onetower.training.config import ConfigError

#: Errors that describe a problem with the user's config, files or data.
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, BadDataError)


def run_recipe(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Call ``main(argv)``; a user error exits with status 2 and a message naming the problem."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
