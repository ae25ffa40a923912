"""Share a trained onetower model: model card, Hub upload.

- :mod:`onetower.hub.card`: the ``README.md`` from the model folder and its run folder.
- :mod:`onetower.hub.upload`: :func:`push_to_hub` (check, stage, commit).
"""

from onetower.hub.card import REAL_LIMITS, SYNTHETIC_NOTES, model_card
from onetower.hub.folder import (
    ModelFolderError,
    auto_class_name,
    find_run_dir,
    model_class,
    read_model_config,
)
from onetower.hub.upload import (
    MODEL_FILES,
    HubUploadError,
    PushConfig,
    check_model_folder,
    push_from_config,
    push_to_hub,
)

__all__ = [
    "MODEL_FILES",
    "REAL_LIMITS",
    "SYNTHETIC_NOTES",
    "HubUploadError",
    "ModelFolderError",
    "PushConfig",
    "auto_class_name",
    "check_model_folder",
    "find_run_dir",
    "model_card",
    "model_class",
    "push_from_config",
    "push_to_hub",
    "read_model_config",
]
