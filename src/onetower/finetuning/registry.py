"""The fine-tuning tasks by ``task.name``: adding a task is one file in this folder and one
line here."""

from onetower.finetuning.nlvr2 import NLVR2Task
from onetower.finetuning.spec import FinetuneSpec
from onetower.finetuning.vqa import VQATask

TASKS: dict[str, FinetuneSpec] = {"vqa": VQATask(), "nlvr2": NLVR2Task()}
