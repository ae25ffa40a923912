"""Image-text retrieval fine-tuning (ALBEF / BLIP / ViLT's retrieval recipe) as a task of the
engine: a pretrained encoder with a contrastive head and an ITM head on hard negatives mined
from the contrastive similarities (ALBEF), built by the objective registry through
:class:`~onetower.objectives.ObjectiveComposer`; evaluated by the Karpathy protocol
(:mod:`onetower.finetuning.retrieval_eval`) with the top-k ITM re-ranking; predictions written.

Unlike VQA / NLVR2 it trains no task model with a new head: the model is the encoder plus the
two objective heads, so it has its own task class here and its own config
(:class:`FinetuneRetrievalConfig`). A pretraining run's ``final/`` folder brings its trained
contrastive / ITM heads (``objectives.safetensors``) when their shapes fit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from onetower.configuration import OneTowerConfig
from onetower.data import build_image_transform, keys, load_tokenizer
from onetower.data.batch_masking import step_generator
from onetower.data.karpathy import RetrievalSplit, read_coco_captions, read_karpathy
from onetower.data.robust import SkipSample, decode_image
from onetower.data.synthetic import CARD_DATA, synthetic_world_under
from onetower.finetuning.retrieval_eval import (
    RERANK_SCORES,
    SplitInputs,
    embed_split,
    evaluate_retrieval,
)
from onetower.finetuning.task import save_processor
from onetower.hub import onetower_folder
from onetower.modeling import OneTowerModel
from onetower.objectives import ObjectiveComposer
from onetower.training.config import ConfigError
from onetower.training.engine import train
from onetower.training.optim import param_groups
from onetower.training.record import RunResult
from onetower.training.schema import RunSection, TrainSection
from onetower.training.task import Built, RunInfo, StepContext, StepOutput

HEADS_FILE = "objectives.safetensors"  # the pretraining room's heads file (same name)


@dataclass
class RetrievalDataSection:
    #: images grouped with their captions: a Karpathy split file (dataset_coco.json /
    #: dataset_flickr30k.json) or COCO captions annotations; null = the synthetic world's
    #: grouped-caption split
    file: str | None = None
    #: COCO captions only: the evaluation annotations (the training file is ``file``)
    eval_file: str | None = None
    image_root: str | None = None  #: folder the image paths are relative to; null = the file's
    train_splits: list[str] = field(default_factory=lambda: ["train"])  #: COCO: [train, restval]
    eval_split: str = "test"  #: the papers' COCO 5k / Flickr30K 1k test sets
    tokenizer: str | None = None  #: null = the one saved with ``init``, else the synthetic one
    synthetic_root: str = "runs/synthetic_world"
    image_size: int = 48  #: random init / synthetic world only (a saved model keeps its own)
    max_text_len: int = 24
    batch_size: int = 32  #: per process
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass
class RetrievalEvalSection:
    batch_size: int = 64
    max_images: int = 0  #: first N evaluation images with all their captions; 0 = all
    rerank_k: int = 16  #: re-rank each query's top k with ITM (ALBEF: 128 / 256); 0 = off
    #: "itm+contrastive" (ITM log P(match) + the contrastive logit) or "itm" (ALBEF)
    rerank_score: str = "itm+contrastive"


@dataclass
class FinetuneRetrievalConfig:
    #: a pretrained onetower encoder folder (a pretraining run's ``final/``); null = random init
    init: str | None = None
    #: "pretrained" loads ``init``'s weights (and its heads when they fit); "random" takes
    #: only its architecture: the random-init baseline at equal architecture and steps
    init_weights: str = "pretrained"
    run: RunSection = field(default_factory=RunSection)
    model: dict[str, Any] = field(default_factory=lambda: {"size": "tiny"})  #: random init only
    #: the heads (objective stanzas): contrastive + ITM with hard negatives (ALBEF)
    objectives: dict[str, Any] = field(
        default_factory=lambda: {
            "contrastive": {"weight": 1.0},
            "itm": {"weight": 1.0, "negatives": "hard"},
        }
    )
    data: RetrievalDataSection = field(default_factory=RetrievalDataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: RetrievalEvalSection = field(default_factory=RetrievalEvalSection)


class CaptionPairs(torch.utils.data.Dataset):
    """One (image, caption) pair per caption of a split, with the image's index as its id so
    hard negatives never pair a caption with its own image's other captions' image."""

    def __init__(self, split: RetrievalSplit, transform: Any) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.captions)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        img = self.split.caption_image[i]
        try:
            image = decode_image(str(self.split.image_paths[img]))
        except SkipSample:
            return None
        return {"pixel_values": self.transform(image), "text": self.split.captions[i], "img": img}


def collate_pairs(tokenizer: Any, max_len: int) -> Any:
    def collate(samples: list[dict | None]) -> dict[str, torch.Tensor]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        enc = tokenizer(
            [s["text"] for s in samples],
            padding="max_length",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        return {
            keys.INPUT_IDS: enc["input_ids"],
            keys.ATTENTION_MASK: enc["attention_mask"],
            keys.PIXEL_VALUES: torch.stack([s["pixel_values"] for s in samples]),
            keys.IMAGE_IDS: torch.tensor([s["img"] for s in samples], dtype=torch.long),
        }

    return collate


def read_split(file: Path, splits: list[str] | str, image_root: str | None) -> RetrievalSplit:
    raw = json.loads(file.read_text(encoding="utf-8"))
    if isinstance(raw, dict) and "annotations" in raw:
        if image_root is None:
            raise ConfigError("data.image_root: COCO captions need the images' folder")
        return read_coco_captions(file, image_root)
    return read_karpathy(file, tuple([splits] if isinstance(splits, str) else splits), image_root)


def _encoder(cfg: DictConfig, vocab: int) -> tuple[OneTowerModel, str]:
    if cfg.init_weights not in ("pretrained", "random"):
        raise ConfigError(
            f"init_weights must be 'pretrained' or 'random', got {cfg.init_weights!r}"
        )
    d = cfg.data
    if cfg.init is None:
        fields = OmegaConf.to_container(cfg.model, resolve=True)
        size = fields.pop("size", None)
        fields = dict(
            vocab_size=vocab, image_size=d.image_size, max_text_len=d.max_text_len, **fields
        )
        try:
            config = OneTowerConfig.from_size(size, **fields) if size else OneTowerConfig(**fields)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
        return OneTowerModel(config), "random init"
    onetower_folder(cfg.init, "init")
    if cfg.init_weights == "random":
        config = OneTowerConfig.from_pretrained(cfg.init)
        return OneTowerModel(config), f"random init (the architecture of {cfg.init})"
    return OneTowerModel.from_pretrained(cfg.init), cfg.init


def load_fitting_heads(composer: ObjectiveComposer, folder: str | None) -> list[str]:
    """Load the saved heads of ``folder`` that fit whole (every tensor present, same shape);
    returns their names (a pretraining run's ``final/`` has them, an encoder alone does not)."""
    path = Path(folder or "", HEADS_FILE)
    if folder is None or not path.is_file():
        return []
    saved, own = load_file(str(path)), composer.heads.state_dict()
    loaded = []
    for name in composer.heads:
        mine = {k: v for k, v in own.items() if k.split(".")[0] == name}
        if mine and all(k in saved and saved[k].shape == v.shape for k, v in mine.items()):
            composer.heads.load_state_dict({k: saved[k] for k in mine}, strict=False)
            loaded.append(name)
    return loaded


def write_predictions(
    path: Path, split: RetrievalSplit, image: torch.Tensor, text: torch.Tensor, k: int = 10
) -> Path:
    """Each query's top k by the contrastive score: ``{"i2t": {image_id: [caption index]},
    "t2i": {caption index: [image_id]}}``, written atomically."""
    sim = image @ text.t()  # (I, T)
    i2t = sim.topk(min(k, sim.shape[1]), dim=1).indices.tolist()
    t2i = sim.t().topk(min(k, sim.shape[0]), dim=1).indices.tolist()
    ids = split.image_ids
    out = {
        "i2t": {ids[i]: row for i, row in enumerate(i2t)},
        "t2i": {str(t): [ids[i] for i in row] for t, row in enumerate(t2i)},
        "captions": split.captions,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    return path


class RetrievalTask:
    """The :class:`~onetower.training.task.Task` of ``recipes/finetune_retrieval.py``."""

    name = "retrieval"
    # every head runs on every (paired) batch
    find_unused_parameters = False

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def _splits(self, accelerator: Accelerator, image_size: int) -> tuple[Any, Any, str | None]:
        d = self.cfg.data
        if d.file is None:
            with accelerator.main_process_first():
                world = synthetic_world_under(
                    d.synthetic_root, image_size=image_size, text_length=d.max_text_len
                )
            file, tok = world.retrieval_file, str(world.tokenizer_dir)
            self.card = {"sources": [], **CARD_DATA}
        else:
            file, tok = Path(d.file), None
            if not file.exists():
                raise FileNotFoundError(f"data.file: {d.file!r} does not exist")
            self.card = {"sources": [str(file)], "description": f"Image-text pairs of {file}."}
        train = read_split(file, list(d.train_splits), d.image_root)
        eval_file = Path(d.eval_file) if d.eval_file else file
        test = read_split(eval_file, d.eval_split, d.image_root)
        if self.cfg.eval.max_images:
            test = test.head(self.cfg.eval.max_images)
        return train, test, tok

    def build(self, accelerator: Accelerator) -> Built:
        cfg, d = self.cfg, self.cfg.data
        if cfg.eval.rerank_score not in RERANK_SCORES:  # checked before any training
            raise ConfigError(
                f"eval.rerank_score must be one of {RERANK_SCORES}, got {cfg.eval.rerank_score!r}"
            )
        size = OneTowerConfig.from_pretrained(cfg.init).image_size if cfg.init else d.image_size
        self.train_split, self.test_split, world_tok = self._splits(accelerator, size)
        tok = d.tokenizer or (
            cfg.init if cfg.init and Path(cfg.init, "tokenizer.json").exists() else world_tok
        )
        if tok is None:
            raise ConfigError("data.tokenizer: name the tokenizer the model was pretrained with")
        self.tokenizer = load_tokenizer(tok)
        model, self.origin = _encoder(cfg, len(self.tokenizer))
        self.config = model.config
        stanzas = OmegaConf.to_container(cfg.objectives, resolve=True)
        try:
            composer = ObjectiveComposer.from_config(model, stanzas, seed=cfg.run.seed)
        except ValueError as e:
            raise ConfigError(f"objectives: {e}") from None
        self.loaded_heads = (
            load_fitting_heads(composer, cfg.init) if cfg.init_weights == "pretrained" else []
        )
        norm = dict(mean=tuple(d.mean), std=tuple(d.std))
        self.transform = build_image_transform(model.config.image_size, False, **norm)
        loader = torch.utils.data.DataLoader(
            CaptionPairs(self.train_split, self.transform),
            batch_size=d.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collate_pairs(self.tokenizer, d.max_text_len),
            generator=torch.Generator().manual_seed(cfg.run.seed),
        )
        t = cfg.train
        groups = param_groups(composer, t.weight_decay, t.lr, (), 1.0)
        return Built(composer, groups, {"train": loader}, {"train": 1.0}, d.batch_size)

    def step(self, module: nn.Module, batch: Mapping[str, Any], ctx: StepContext) -> StepOutput:
        out = module(batch, generator=step_generator(ctx.seed + 1, ctx.micro_step, ctx.rank))
        logs = out.logs()
        logs.pop("loss")
        return StepOutput(out.loss, logs)

    def after_optimizer_step(self, module: nn.Module) -> None:
        module.after_optimizer_step()

    def evaluate(self, module: nn.Module, accelerator: Accelerator, step: int) -> dict[str, float]:
        if not accelerator.is_main_process:
            return {}
        e, split = self.cfg.eval, self.cfg.data.eval_split
        metrics = evaluate_retrieval(
            module,
            self.test_split,
            self.tokenizer,
            self.transform,
            self.cfg.data.max_text_len,
            e.rerank_k,
            e.rerank_score,
            e.batch_size,
        )
        inputs = SplitInputs(
            self.test_split, self.tokenizer, self.transform, self.cfg.data.max_text_len
        )
        was = module.training
        module.eval()
        image, text = embed_split(module, inputs, e.batch_size)
        module.train(was)
        out = Path(self.cfg.run.output_dir) / f"predictions_{split}.json"
        write_predictions(out, self.test_split, image, text)
        return {f"{split}/{k}": v for k, v in metrics.items()}

    def save(self, module: nn.Module, folder: Path) -> None:
        """The encoder, its tokenizer, processor and the two heads (so the folder is
        re-ranked, evaluated or fine-tuned further from itself)."""
        module.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(str(folder))
        state = {k: v.detach().cpu().contiguous() for k, v in module.heads.state_dict().items()}
        save_file(state, str(Path(folder) / HEADS_FILE))
        save_processor(folder, self.tokenizer, self.config, self.cfg.data)

    def finish(self, module: nn.Module, accelerator: Accelerator, info: RunInfo) -> dict[str, Any]:
        split = self.cfg.data.eval_split
        m = info.metrics
        figures = ", ".join(
            f"{k} {m[f'{split}/{k}']:.1f}" for k in ("i2t_r1", "t2i_r1") if f"{split}/{k}" in m
        )
        summary = (
            f"Fine-tuned retrieval from {self.origin}"
            + (f" (heads {self.loaded_heads} loaded)" if self.loaded_heads else "")
            + f" for {info.steps_this_run} steps ({info.seconds / 60:.1f} min): {split} "
            f"({len(self.test_split.image_paths)} images, {len(self.test_split.captions)} "
            f"captions, Karpathy protocol) {figures or 'not evaluated'}. Model: {info.final_dir}; "
            f"predictions_{split}.json and metrics.json in {info.output_dir}."
        )
        return {
            "model_class": type(module.model).__name__,
            "summary": summary,
            "data": self.card,
            "skipped": {},
            "init": self.cfg.init,
        }


def finetune_retrieval(cfg: DictConfig) -> RunResult:
    """Run ``recipes/finetune_retrieval.py`` (see :class:`FinetuneRetrievalConfig`)."""
    return train(cfg, RetrievalTask(cfg))
