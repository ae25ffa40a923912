"""Pretraining as a task the engine drives: the objective heads over the shared encoder.

Every random choice of a step is a function of ``(seed, step, slot)``: the MLM / MIM masks are
drawn for the global batch of the step (every micro-batch of every process) and sliced, so 1
or N processes, with or without gradient accumulation, see the same masks. ITM negatives and
patch dropout are drawn per slot, from a generator seeded by ``(seed, step, slot)``, among the
slot's own rows (a rank holds only its own images): slot ``s`` draws the same whether it is a
process or an accumulation micro-batch, so N processes of batch B equal one process of batch
B with ``train.grad_accum=N`` (the README's "Processes and equivalence" says which recipes also
equal one process of batch N * B).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from omegaconf import DictConfig
from torch import nn

from onetower.data import word_token_ids
from onetower.data.batch_masking import step_generator
from onetower.objectives import ObjectiveComposer
from onetower.pretraining.build import build_composer, build_masker, build_model
from onetower.pretraining.data import PretrainData, build_data
from onetower.pretraining.evaluate import ZeroShotProbe, eval_batches, evaluate
from onetower.pretraining.heads_io import save_heads
from onetower.pretraining.report import reconstructions, summarise
from onetower.processing import OneTowerProcessor
from onetower.training.config import ConfigError
from onetower.training.optim import param_groups
from onetower.training.task import Built, RunInfo, StepContext, StepOutput


class PretrainTask:
    """The :class:`~onetower.training.task.Task` of the pretraining recipes."""

    name = "pretraining"
    # unpaired batches run only some heads: the others get no gradient that step
    find_unused_parameters = True

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.data: PretrainData | None = None

    def build(self, accelerator: Accelerator) -> Built:
        cfg = self.cfg
        self.data = data = build_data(cfg, accelerator)
        model = build_model(cfg, data.tokenizer)
        composer = build_composer(cfg, model)
        self.masker = build_masker(data.tokenizer, composer)
        self.probe = self._probe(data.tokenizer, composer)
        if cfg.train.compile:
            model.encoder.compile()  # in place: parameter names (and checkpoints) stay the same
        groups = param_groups(composer, cfg.train.weight_decay)
        return Built(composer, groups, data.loaders, data.ratios, cfg.data.batch_size)

    def _probe(self, tokenizer: Any, composer: ObjectiveComposer) -> dict[str, list[int]]:
        words = self.cfg.eval.probe_words
        if words and "mlm" not in composer.heads:
            raise ConfigError("eval.probe_words needs the mlm objective (it predicts the words)")
        try:
            return {group: word_token_ids(tokenizer, ws) for group, ws in words.items()}
        except ValueError as e:
            raise ConfigError(f"eval.probe_words: {e}") from None

    def step(self, module: nn.Module, batch: Mapping[str, Any], ctx: StepContext) -> StepOutput:
        # masks for the whole step's batch, sliced to this micro-batch (see the module doc)
        batch = self.masker(batch, step_generator(ctx.seed, ctx.step), ctx.slot, ctx.slots)
        # ITM negatives and patch dropout: per (step, slot), among the slot's rows, so a resume
        # redraws them and a slot draws the same as a process or as an accumulation micro-batch
        out = module(batch, generator=step_generator(ctx.seed + 1, ctx.step, ctx.slot))
        logs = out.logs()
        logs.pop("loss")
        return StepOutput(out.loss, logs)

    def after_optimizer_step(self, module: nn.Module) -> None:
        module.after_optimizer_step()

    def _eval_batches(self) -> Any:
        e, d = self.cfg.eval, self.cfg.data
        return eval_batches(
            self.data.val, self.data.tokenizer, d.max_text_len, e.max_samples, e.batch_size
        )

    def evaluate(self, module: nn.Module, accelerator: Accelerator, step: int) -> dict[str, float]:
        if not accelerator.is_main_process:  # the others wait in the engine
            return {}
        mask_id = self.data.tokenizer.mask_token_id
        words = {g: list(ws) for g, ws in self.cfg.eval.probe_words.items()}
        zero_shot = ZeroShotProbe(words, self.data.tokenizer, self.cfg.data.max_text_len)
        return evaluate(
            module,
            self.masker,
            self._eval_batches(),
            self.probe,
            mask_id,
            accelerator.device,
            zero_shot if words else None,
        )

    def save(self, module: nn.Module, folder: Path) -> None:
        """The encoder, its tokenizer and processor, and the heads (zero-shot evaluation and
        continued pretraining need them)."""
        d = self.cfg.data
        module.model.save_pretrained(folder)
        self.data.tokenizer.save_pretrained(str(folder))
        save_heads(module, folder)
        processor = OneTowerProcessor.from_config(
            self.data.tokenizer,
            module.model.config.image_size,
            d.max_text_len,
            mean=list(d.mean),
            std=list(d.std),
        )
        processor.save_pretrained(str(folder))

    def finish(self, module: nn.Module, accelerator: Accelerator, info: RunInfo) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        n = cfg.eval.reconstructions
        if n > 0 and len(data.val):
            batch, _ = next(eval_batches(data.val, data.tokenizer, cfg.data.max_text_len, n, n))
            path = reconstructions(
                module,
                batch,
                self.masker,
                tuple(cfg.data.mean),
                tuple(cfg.data.std),
                info.output_dir / "reconstructions.png",
            )
            if path is not None:
                info.files["reconstructions"] = path
        summary = summarise(cfg.run.recipe, info.metrics, info)
        if data.counter.skipped or data.counter.notes():
            summary += f" Skipped samples: {data.counter.summary()}."
        return {
            "model_class": type(module.model).__name__,
            "summary": summary,
            "data": data.card,
            "skipped": data.counter.counts(),
            "objectives": {n: module.weights[n] for n in module.heads},
        }
