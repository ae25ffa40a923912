"""The objective heads saved beside the encoder in ``final/``, so zero-shot evaluation and
continued pretraining work from the model folder alone."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from onetower.objectives import ObjectiveComposer

HEADS_FILE = "objectives.safetensors"


def tied_head_keys(composer: ObjectiveComposer) -> set[str]:
    """Head state keys whose tensor is an encoder parameter (the MLM decoder tied to the token
    embedding): they belong to the encoder's file, not the heads'."""
    encoder = {p.data_ptr() for p in composer.model.parameters()}
    return {k for k, v in composer.heads.state_dict().items() if v.data_ptr() in encoder}


def save_heads(composer: ObjectiveComposer, folder: Path) -> Path:
    """Write the heads' own weights (not the tensors tied to the encoder)."""
    tied = tied_head_keys(composer)
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in composer.heads.state_dict().items()
        if k not in tied
    }
    save_file(state, str(folder / HEADS_FILE))
    return folder / HEADS_FILE


def load_heads(composer: ObjectiveComposer, folder: Path) -> None:
    """Load ``folder``'s heads file into ``composer``'s heads (tied tensors come with the
    encoder).

    Raises:
        FileNotFoundError: the folder has no heads file.
        ValueError: the file does not fit the composer's heads (names the keys).
    """
    path = Path(folder) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} holds no objective heads")
    missing, unexpected = composer.heads.load_state_dict(load_file(str(path)), strict=False)
    missing = sorted(set(missing) - tied_head_keys(composer))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the heads built from the config: missing {missing[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
