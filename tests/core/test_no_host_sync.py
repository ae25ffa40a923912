"""The composer forward of every recipe makes no host sync (``.item()`` and friends).

On CUDA a sync stalls the host until the GPU queue drains, every step. CPU runs show the same
ops in the profiler (``aten::item`` -> ``aten::_local_scalar_dense``), so this is checked here
at toy size with each recipe's debug config. Data-dependent shapes (``nonzero``: also a sync
on CUDA) are kept to the places that gather the selected MLM / MIM positions and filter ITM
negative rows, by design (logits over every position would cost more with a large vocabulary);
a budget per recipe catches new ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from onetower.data import keys, train_wordpiece_tokenizer
from onetower.data.batch_masking import step_generator
from onetower.pretraining import PretrainConfig
from onetower.pretraining.build import build_composer, build_masker, build_model
from onetower.training import load_config

DEBUG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "debug"
SYNCS = {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero"}
#: nonzero calls allowed per forward: MLM rows + labels, MIM rows + targets, ITM negatives.
NONZERO_BUDGET = {
    "vilt_like": 3,
    "flava_like": 6,
    "flava_like, ITM on the masked pass": 5,
    "m3ae_like": 5,
    "beit3_like": 4,
}


#: variants of a recipe's debug config whose code paths differ (name -> (recipe, overrides))
VARIANTS = {
    "flava_like, ITM on the masked pass": (
        "flava_like",
        [
            "objectives.itm.negatives=random",
            "objectives.itm.masked_pass=true",
            "objectives.itm.neg_ratio=0.5",
        ],
    )
}


def _composer_and_batch(recipe: str):
    recipe, overrides = VARIANTS.get(recipe, (recipe, []))
    cfg = load_config(PretrainConfig, ["--config", str(DEBUG / f"{recipe}.yaml"), *overrides])
    tok = train_wordpiece_tokenizer(["a red circle left of a blue square"], vocab_size=512)
    model = build_model(cfg, tok)
    composer = build_composer(cfg, model).train()
    masker = build_masker(tok, composer)
    g = torch.Generator().manual_seed(0)
    B, T, S = 8, cfg.data.max_text_len, cfg.data.image_size
    ids = torch.randint(5, len(tok), (B, T), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    batch = {
        keys.INPUT_IDS: ids,
        keys.ATTENTION_MASK: torch.ones_like(ids),
        keys.WORD_IDS: torch.arange(-1, T - 1)
        .expand(B, T)
        .masked_fill(torch.arange(T) == T - 1, -1),
        keys.PIXEL_VALUES: torch.randn(B, 3, S, S, generator=g),
        keys.IMAGE_IDS: torch.arange(B),
    }
    return composer, masker(batch, step_generator(0, 0))


def _forward_ops(composer, batch) -> dict[str, int]:
    """Op name -> count over one composer forward (views, heads, ITM negatives)."""
    composer(batch, generator=step_generator(1, 0))  # first call: lazy tables, caches
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        composer(batch, generator=step_generator(1, 0))
    counts: dict[str, int] = {}
    for event in prof.events():
        counts[event.name] = counts.get(event.name, 0) + 1
    return counts


@pytest.mark.parametrize("recipe", sorted(NONZERO_BUDGET))
def test_forward_has_no_host_sync(recipe: str) -> None:
    composer, batch = _composer_and_batch(recipe)
    ops = _forward_ops(composer, batch)
    syncs = {name: n for name, n in ops.items() if name in SYNCS}
    assert not syncs, f"{recipe}: host syncs in the forward pass: {syncs}"
    nonzero = ops.get("aten::nonzero", 0)
    assert nonzero <= NONZERO_BUDGET[recipe], (
        f"{recipe}: {nonzero} data-dependent nonzero calls (budget {NONZERO_BUDGET[recipe]}): "
        "a new boolean index or nonzero in the forward is a host sync on CUDA"
    )


def test_detects_an_item_in_a_head() -> None:
    """The check itself: a head that calls ``.item()`` is caught."""
    composer, batch = _composer_and_batch("vilt_like")
    head = composer.heads["mlm"]
    original = head.forward

    def forward_with_item(views, b):
        out = original(views, b)
        out.metrics["loss_value"] = torch.tensor(out.loss.item())  # the sync under test
        return out

    head.forward = forward_with_item
    ops = _forward_ops(composer, batch)
    assert ops.get("aten::item", 0) >= 1 and ops.get("aten::_local_scalar_dense", 0) >= 1
