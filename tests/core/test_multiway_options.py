"""The Multiway options BEiT-3's released checkpoints need: per-modality attention projections
(``multiway_attention``) and Sub-LN (``subln``), next to the unchanged shared-attention Multiway."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from onetower import OneTowerConfig, OneTowerModel
from onetower.layers import IMAGE_EXPERT, TEXT_EXPERT, Block
from onetower.training.optim import param_groups

BEIT3 = dict(multiway=True, multiway_attention=True, subln=True)


def tiny(**overrides) -> OneTowerModel:
    torch.manual_seed(0)
    model = OneTowerModel(OneTowerConfig.from_size("tiny", **overrides)).eval()
    with torch.no_grad():  # LayerNorms at 1 / 0 would hide a norm applied in the wrong place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def split_apply(experts, x: torch.Tensor, split: int) -> torch.Tensor:
    """The reference routing: text tokens through TEXT_EXPERT, the rest through IMAGE_EXPERT."""
    return torch.cat([experts[TEXT_EXPERT](x[:, :split]), experts[IMAGE_EXPERT](x[:, split:])], 1)


def reference_block(block: Block, x: torch.Tensor, split: int) -> torch.Tensor:
    """BEiT-3's layer written out: per-modality everything, one softmax over all tokens."""
    B, L, D = x.shape
    H = block.attn.num_heads
    h = split_apply(block.norm1, x, split)
    q, k, v = split_apply(block.attn.qkv, h, split).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, L, H, D // H).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
    a = (weights @ v).transpose(1, 2).reshape(B, L, D)
    a = split_apply(block.attn.proj, split_apply(block.attn.norm, a, split), split)
    x = x + a

    def ffn(i: int, t: torch.Tensor) -> torch.Tensor:
        mlp = block.mlp[i]
        return mlp.fc2(mlp.norm(F.gelu(mlp.fc1(block.norm2[i](t)))))

    return x + torch.cat([ffn(TEXT_EXPERT, x[:, :split]), ffn(IMAGE_EXPERT, x[:, split:])], 1)


@pytest.mark.parametrize("split", [0, 5, 12])
def test_block_matches_the_written_out_beit3_layer(split: int) -> None:
    """Per-modality q/k/v/out and Sub-LN, at a split inside, at 0 (image only) and at the
    full length (text only)."""
    block = tiny(**BEIT3).encoder.blocks[0]
    assert len(block.attn.qkv) == 2 and len(block.attn.proj) == 2 and len(block.attn.norm) == 2
    assert isinstance(block.mlp[0].norm, torch.nn.LayerNorm) and block.mlp[0].norm.eps == 1e-6
    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        torch.testing.assert_close(block(x, None, split), reference_block(block, x, split))


def test_shared_attention_multiway_is_unchanged() -> None:
    """``multiway`` alone keeps one q/k/v/out and no Sub-LN: the parameter names of old
    checkpoints."""
    names = {n for n, _ in tiny(multiway=True).named_parameters() if ".blocks.0.attn." in n}
    assert names == {
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.0.attn.qkv.bias",
        "encoder.blocks.0.attn.proj.weight",
        "encoder.blocks.0.attn.proj.bias",
    }
    assert not any(".mlp.0.norm." in n for n, _ in tiny(multiway=True).named_parameters())


def test_text_only_and_image_only_passes_use_only_their_experts() -> None:
    m = tiny(**BEIT3, num_hidden_layers=1)
    attn = m.encoder.blocks[0].attn
    ids = torch.randint(5, 512, (2, 7))
    px = torch.randn(2, 3, 32, 32)
    for kwargs, idle in (({"input_ids": ids}, IMAGE_EXPERT), ({"pixel_values": px}, TEXT_EXPERT)):
        m.zero_grad(set_to_none=True)
        m(**kwargs).last_hidden_state.sum().backward()
        for experts in (attn.qkv, attn.norm, attn.proj):
            assert all(p.grad is None for p in experts[idle].parameters())
            assert all(p.grad is not None for p in experts[1 - idle].parameters())


def test_config_checks_and_old_configs_load(tmp_path) -> None:
    with pytest.raises(ValueError, match="multiway_attention=True needs multiway=True"):
        OneTowerConfig.from_size("tiny", multiway_attention=True)
    old = OneTowerConfig.from_size("tiny", multiway=True).to_dict()
    for key in ("multiway_attention", "subln"):
        old.pop(key)
    loaded = OneTowerConfig(**{k: v for k, v in old.items() if k != "transformers_version"})
    assert loaded.multiway and not loaded.multiway_attention and not loaded.subln


def test_round_trip_checkpointing_and_weight_decay(tmp_path) -> None:
    m = tiny(**BEIT3)
    ids = torch.randint(5, 512, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    px = torch.randn(2, 3, 32, 32)
    m.save_pretrained(tmp_path / "m")
    back = OneTowerModel.from_pretrained(tmp_path / "m").eval()
    assert back.config.multiway_attention and back.config.subln
    with torch.no_grad():
        a = m(input_ids=ids, attention_mask=mask, pixel_values=px).last_hidden_state
        b = back(input_ids=ids, attention_mask=mask, pixel_values=px).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    # activation checkpointing leaves the gradients unchanged
    grads = []
    for ckpt in (False, True):
        m.train()
        m._set_activation_checkpointing(ckpt)
        m.zero_grad(set_to_none=True)
        m(input_ids=ids, attention_mask=mask, pixel_values=px).last_hidden_state.sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)

    # the Sub-LN norms are not decayed, the per-modality projections are
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = {
        names[id(p)] for g in param_groups(m, 0.05) if g["weight_decay"] for p in g["params"]
    }
    assert "encoder.blocks.0.attn.qkv.1.weight" in decayed
    assert not any(".attn.norm." in n or ".mlp.0.norm." in n for n in decayed)
