"""Continue pretraining from an imported BEiT-3: the ``beit3_like`` recipe starts from the
converted folder. torchscale's BEiT3 has no pretraining heads, so the check is the encoder's:
its states on the first training batch, before any update, equal the source model's."""

from __future__ import annotations

import math

import pytest
import torch

from onetower.convert_beit3 import convert_beit3_to_onetower
from onetower.convert_io import save_converted
from onetower.data import keys
from onetower.pretraining import pretrain
from onetower.pretraining.task import PretrainTask

from ..conftest import debug_config, save_world_tokenizer

pytest.importorskip(
    "torchscale",
    reason="the BEiT-3 reference: .venv/bin/pip install --no-deps torchscale==0.3.0 "
    "fairscale==0.4.13 (README set-up)",
)


# torchscale imports timm.models.layers (deprecated in the timm this project uses)
pytestmark = pytest.mark.filterwarnings("ignore:Importing from timm.models.layers:FutureWarning")


def test_beit3_like_continues_from_a_converted_beit3(tmp_path, worlds, monkeypatch) -> None:
    from .test_convert_beit3 import TOL, make_beit3

    beit3 = make_beit3(seed=3, vocab_size=512)  # the world's tokenizer fits
    result = convert_beit3_to_onetower(beit3.state_dict(), num_heads=4, max_text_len=16)
    save_converted(result.model, tmp_path / "beit3")

    seen: list[dict] = []
    step = PretrainTask.step

    def recording(self, module, batch, ctx):
        if not seen:  # the encoder as training starts, on the step's clean batch
            encoder = getattr(module, "module", module).model
            with torch.no_grad():
                out = encoder(
                    input_ids=batch[keys.INPUT_IDS],
                    attention_mask=batch[keys.ATTENTION_MASK],
                    pixel_values=batch[keys.PIXEL_VALUES],
                )
            seen.append({**batch, "text": out.tokens("text"), "image": out.tokens("image")})
        return step(self, module, batch, ctx)

    monkeypatch.setattr(PretrainTask, "step", recording)
    cfg = debug_config(
        "beit3_like",
        tmp_path,
        f"model.init={tmp_path / 'beit3'}",
        "model.init_heads=none",  # BEiT-3 released no MLM / MIM heads: they start random
        *(f"model.{k}=null" for k in ("size", "multiway", "use_mask_token")),
        "train.max_steps=3",
        "train.log_every=1",
        "data.ratios.texts=0",
        "data.ratios.images=0",
        world=worlds(8),
    )
    save_world_tokenizer(cfg, tmp_path / "beit3")
    run = pretrain(cfg)
    assert len(run.history["loss"]) == 3
    assert all(math.isfinite(v) for _, v in run.history["loss"])

    batch = seen[0]
    real = batch[keys.ATTENTION_MASK].bool()
    with torch.no_grad():
        ref = beit3(
            textual_tokens=batch[keys.INPUT_IDS],
            visual_tokens=batch[keys.PIXEL_VALUES],
            text_padding_position=~real,
        )
    n_vision = ref["multiway_split_position"]
    ref = ref["encoder_out"]
    assert (batch["image"] - ref[:, :n_vision]).abs().max() <= TOL
    assert (batch["text"][real] - ref[:, n_vision:][real]).abs().max() <= TOL
    assert (~real).any()  # padding was exercised
