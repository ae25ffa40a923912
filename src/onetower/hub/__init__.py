"""Share a trained onetower model: model card, trust_remote_code bundle, Hub upload.

- :mod:`onetower.hub.card`: the ``README.md`` from the model folder and its run record.
- :mod:`onetower.hub.remote_code`: a copy of the model code in the folder, so it loads with
  ``trust_remote_code=True`` where onetower is not installed.
- :mod:`onetower.hub.upload`: :func:`push_to_hub` (check, stage, commit).
- :func:`prepare_model_folder`: the code and the card, written when a run saves its model.
"""

from onetower.hub.card import PIPELINE_TAGS, REAL_LIMITS, model_card, write_model_card
from onetower.hub.folder import (
    ModelFolderError,
    auto_class_name,
    find_run_dir,
    model_class,
    onetower_folder,
    read_model_config,
)
from onetower.hub.prepare import prepare_model_folder
from onetower.hub.remote_code import RemoteCodeError, add_remote_code, has_remote_code
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
    "PIPELINE_TAGS",
    "REAL_LIMITS",
    "HubUploadError",
    "ModelFolderError",
    "PushConfig",
    "RemoteCodeError",
    "add_remote_code",
    "auto_class_name",
    "check_model_folder",
    "find_run_dir",
    "has_remote_code",
    "model_card",
    "model_class",
    "onetower_folder",
    "prepare_model_folder",
    "push_from_config",
    "push_to_hub",
    "read_model_config",
    "write_model_card",
]
