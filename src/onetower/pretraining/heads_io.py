"""The objective heads saved beside the encoder in ``final/``, so zero-shot evaluation and
continued pretraining work from the model folder alone."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from onetower.objectives import ObjectiveComposer

HEADS_FILE = "objectives.safetensors"


def save_heads(composer: ObjectiveComposer, folder: Path) -> Path:
    """Write the heads' weights (a tied decoder is the encoder's tensor and goes with it)."""
    state = {k: v.detach().cpu().contiguous() for k, v in composer.heads.state_dict().items()}
    save_file(state, str(folder / HEADS_FILE))
    return folder / HEADS_FILE


def load_heads(composer: ObjectiveComposer, folder: Path) -> None:
    """Load ``folder``'s heads file into ``composer``'s heads.

    Raises:
        FileNotFoundError: the folder has no heads file.
        ValueError: the file does not fit the composer's heads (names the keys).
    """
    path = Path(folder) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} holds no objective heads")
    missing, unexpected = composer.heads.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the heads built from the config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
