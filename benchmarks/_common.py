"""Shared pieces of the step benchmarks: recipe steps built as the loop builds them, a fixed
synthetic batch, alternating timing, peak memory, FLOPs and the environment record.

Not a test module: the figures depend on the machine. Every speed figure the scripts print is a
ratio against a peer timed in the same process, in alternating rounds, after warm-up.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from onetower.data import keys, train_wordpiece_tokenizer
from onetower.data.batch_masking import step_generator
from onetower.pretraining import PretrainConfig
from onetower.pretraining.build import build_composer, build_masker, build_model
from onetower.training import load_config
from onetower.training.optim import build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "moon")


@dataclass
class Contender:
    """One timed training step.

    Attributes:
        name: row label.
        step: runs one full step (forward of every view, heads, backward, clip, optimiser).
        batch: samples per step.
        params: trainable parameters.
        notes: what exactly runs, printed under the table.
    """

    name: str
    step: Callable[[], None]
    batch: int
    params: int
    notes: str = ""
    module: torch.nn.Module | None = None
    last_batch: Callable[[], dict] | None = None
    times: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Best step time of the timed rounds: on a shared machine other load only adds time,
        so the minimum is the steadiest estimate of the step's own cost (medians are kept in
        the JSON too)."""
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.seconds


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def pick_device(name: str | None) -> torch.device:
    """``--device``; default CUDA when present."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as ``train.mixed_precision=bf16``); fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokenizer(vocab_size: int = 512) -> Any:
    """A WordPiece tokenizer like the synthetic world's recipe default (in memory, no files),
    filled to ``vocab_size`` with made-up words so the vocabulary has the size asked for."""
    g = torch.Generator().manual_seed(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [
        "".join(letters[i] for i in torch.randint(0, 26, (6,), generator=g).tolist())
        for _ in range(vocab_size)
    ]
    texts = [f"a {c} {s} left of a {w}" for c in COLOURS for s in SHAPES for w in words[:8]]
    texts += words
    return train_wordpiece_tokenizer(texts, vocab_size=vocab_size)


def synthetic_batch(
    tok: Any, batch: int, text_len: int, image_size: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A collated pair batch with random content: ``[CLS] words [SEP]``, no padding, an
    all-ones attention mask (as the collator emits), one word per token, distinct image ids."""
    g = torch.Generator().manual_seed(seed)
    special = sorted(set(tok.all_special_ids))
    ids = torch.randint(max(special) + 1, len(tok), (batch, text_len), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    words = torch.arange(-1, text_len - 1).expand(batch, -1).clone()  # a word per token
    words[:, -1] = -1  # [SEP]
    return {
        keys.INPUT_IDS: ids,
        keys.WORD_IDS: words,
        keys.ATTENTION_MASK: torch.ones_like(ids),
        keys.PIXEL_VALUES: torch.randn(batch, 3, image_size, image_size, generator=g),
        keys.IMAGE_IDS: torch.arange(batch),
    }


def to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def size_overrides(
    width: int, depth: int, heads: int, patches: int, text_len: int, patch_size: int = 8
) -> list[str]:
    """``key=value`` overrides giving a recipe the matched size: 4x feed-forward, and one
    patch size for every recipe and peer so the patch count sets the resolution."""
    side = int(round(patches**0.5))
    if side * side != patches:
        raise ValueError(f"the patch count must be a square number, got {patches}")
    return [
        f"model.hidden_size={width}",
        f"model.num_attention_heads={heads}",
        f"model.intermediate_size={4 * width}",
        f"model.num_hidden_layers={depth}",
        f"model.patch_size={patch_size}",
        f"data.image_size={side * patch_size}",
        f"data.max_text_len={text_len}",
    ]


def recipe_step(
    recipe: str,
    overrides: Sequence[str],
    batch_size: int,
    device: torch.device,
    tok: Any,
    name: str | None = None,
    edit_batch: Callable[[dict], dict] | None = None,
    optimizer_fused: bool | None = None,
) -> Contender:
    """The loop's real step for ``recipes/configs/<recipe>.yaml`` + overrides, on a fixed batch.

    As :func:`onetower.pretraining.PretrainTask.step` does it: the :class:`BatchMasker` draws this
    step's masks, the composer runs every view and head, then backward, clip, AdamW step and
    ``zero_grad(set_to_none=True)``. Accelerate is left out (a no-op wrapper on one process).
    The synthetic batch is made once, so data loading is not in the step.
    ``edit_batch`` changes the masked batch before the forward (ablations).
    """
    cfg = load_config(PretrainConfig, ["--config", str(CONFIGS / f"{recipe}.yaml"), *overrides])
    t = cfg.train
    model = build_model(cfg, tok)
    composer = build_composer(cfg, model).to(device).train()
    masker = build_masker(tok, composer)
    # built after .to(device) so fused=None picks the fused kernel on CUDA (see RESULTS.md)
    optimizer = build_optimizer(
        composer, t.lr, t.weight_decay, tuple(t.betas), t.eps, fused=optimizer_fused
    )
    if t.compile:
        model.encoder.compile()
    batch = to(synthetic_batch(tok, batch_size, cfg.data.max_text_len, cfg.data.image_size), device)
    counter = iter(range(1 << 62))
    last: dict[str, dict] = {}

    def step() -> None:
        i = next(counter)
        b = masker(batch, step_generator(cfg.run.seed, i), 0, 1)
        if edit_batch is not None:
            b = edit_batch(b)
        last["batch"] = b
        with autocast(device):
            out = composer(b, generator=step_generator(cfg.run.seed + 1, i))
        out.loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(composer.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        composer.after_optimizer_step()

    n = sum(p.numel() for p in composer.parameters() if p.requires_grad)
    notes = f"heads {'+'.join(composer.heads)}"
    return Contender(name or recipe, step, batch_size, n, notes, composer, lambda: last["batch"])


def time_alternating(
    contenders: Sequence[Contender], device: torch.device, warmup: int, rounds: int
) -> None:
    """Warm every contender up, then ``rounds`` rounds each timing one step of every
    contender, in an order rotated every round, so load changes on a shared machine hit all
    of them alike. Times land in ``Contender.times``."""
    for c in contenders:
        for _ in range(warmup):
            c.step()
    sync(device)
    n = len(contenders)
    for r in range(rounds):
        for k in range(n):
            c = contenders[(r + k) % n]
            start = time.perf_counter()
            c.step()
            sync(device)
            c.times.append(time.perf_counter() - start)


#: Where a benchmark writes its JSON unless ``--json`` says otherwise: an ignored folder, so
#: running one never dirties the checkout (the committed JSONs are the records RESULTS.md cites).
OUTPUT_DIR = Path("runs") / "benchmarks"


def json_path(name: str) -> str:
    """The default ``--json`` of benchmark ``name``."""
    return str(OUTPUT_DIR / f"{name}.json")


def write_json(path: str | Path, record: Any) -> Path:
    """Write a benchmark's record (creating the folder) and say where."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return path


@contextlib.contextmanager
def quiet_stderr() -> Any:
    """Silence file descriptor 2 (the profiler's C++ ``profiler_start`` / ``profiler_stop``
    lines go there, past Python's ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes held by tensors during one step, parameters, gradients and optimiser state
    included. CUDA: ``torch.cuda.max_memory_allocated``. CPU (no allocator statistics): the
    profiler's memory timeline (every tensor allocation and free, with the tensors that
    existed before), summed over categories."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with (
        quiet_stderr(),
        profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof,
    ):
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return int(max(sum(s) for s in sizes)) if sizes else 0


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs of one step (forward + backward), counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


FLOPS_FORMULA = (
    "FLOPs/step = matmul FLOPs of forward + backward counted by torch.utils.flop_counter "
    "on one step = 6 x params x tokens (each Linear at the tokens it actually sees, over every "
    "encoder pass) + attention 12 x B x L^2 x D per layer and pass; MFU = FLOPs/step x "
    "steps/s / peak FLOP/s"
)
