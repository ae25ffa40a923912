"""Running a recipe from the command line: user errors become one clear line, not a trace;
a run stopped by a signal says how to resume and exits with its own status."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from onetower.data import BadDataError
from onetower.hub import ModelFolderError
from onetower.training.config import ConfigError
from onetower.training.interrupt import EXIT_INTERRUPTED, RunInterrupted

#: Errors that describe a problem with the user's config, files or data.
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, BadDataError, ModelFolderError)
#: Exit status of a user error.
EXIT_USER_ERROR = 2


def run_recipe(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Call ``main(argv)``. A user error exits with status 2 and a message naming the problem;
    a run stopped by SIGINT / SIGTERM (checkpoint written) exits with 75, saying how to resume.
    """
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except RunInterrupted as e:
        if main_process:
            print(f"stopped: {e}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
