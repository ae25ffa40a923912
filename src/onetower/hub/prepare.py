"""Make a freshly saved model folder ready to share: remote code, auto_map, model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onetower.hub.card import write_model_card
from onetower.hub.remote_code import add_remote_code


def prepare_model_folder(
    folder: str | Path, run_dir: str | Path | None = None, **card_kwargs: Any
) -> list[str]:
    """What the engine calls on a final model folder once it is saved: write the
    trust_remote_code bundle and ``auto_map`` (:func:`~onetower.hub.add_remote_code`), then,
    when ``run_dir`` is given, the ``README.md`` card from its run record
    (:func:`~onetower.hub.write_model_card`). Each file is replaced atomically.

    Args:
        folder: the saved model (``config.json``, weights).
        run_dir: the run folder holding ``metrics.json`` (and ``config.yaml``); None = no card,
            e.g. when the record is written later.
        **card_kwargs: ``repo_id``, ``license``, ``base_model``, ``datasets`` for the card.

    Returns:
        The names of the files written, sorted.

    Raises:
        ModelFolderError: ``folder`` holds no onetower model config.
        RemoteCodeError: the model code imports something the bundle cannot hold.
    """
    written = [*add_remote_code(folder), "config.json"]
    if run_dir is not None:
        written.append(write_model_card(folder, run_dir, **card_kwargs).name)
    return sorted(written)
