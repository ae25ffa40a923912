"""Share a trained onetower model on the Hugging Face Hub with a generated model card.

Checks the model folder (config, weights, processor) before any network call, uploads a
staged copy (the folder itself is never modified) with the model code for
`trust_remote_code=True` loading and a README.md built from the run's record (metrics.json)
and config.yaml. Log in first with `hf auth login` or set HF_TOKEN.

    python recipes/push_to_hub.py checkpoint=runs/vqa/final repo_id=me/onetower-vqa \
        [private=true] [revision=BRANCH] [license=mit] [base_model=ID] [token=...]
"""

import sys

from onetower.hub import HubUploadError, ModelFolderError, PushConfig, push_from_config
from onetower.training import load_config
from onetower.training.cli import run_recipe


def main(argv: list[str]) -> str:
    """Parse ``key=value`` overrides (see :class:`onetower.hub.PushConfig`) and push."""
    url = push_from_config(load_config(PushConfig, argv, None))
    print(f"uploaded: {url}")
    return url


if __name__ == "__main__":
    try:
        run_recipe(main, sys.argv[1:])
    except (ModelFolderError, HubUploadError) as e:  # user-facing: one line, like run_recipe
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
