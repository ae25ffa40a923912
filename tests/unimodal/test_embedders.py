"""Text / image embedders, position tables and unimodal towers."""

from __future__ import annotations

import math

import pytest
import torch

from onetower.unimodal import (
    ImageEmbedder,
    TextEmbedder,
    UnimodalTower,
    patchify,
    sincos_1d,
    sincos_2d,
    unpatchify,
)


def test_patchify_matches_a_loop_and_round_trips() -> None:
    images = torch.randn(2, 3, 16, 24)
    patches = patchify(images, 8)  # (2, 6, 192)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    for n in range(6):
        r, c = divmod(n, 3)  # row-major grid of 2 x 3
        ref = (
            images[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
            .permute(0, 2, 3, 1)
            .reshape(2, -1)
        )
        torch.testing.assert_close(patches[:, n], ref)
    torch.testing.assert_close(unpatchify(patches, 8, (2, 3)), images)


def test_patch_order_matches_patch_embed() -> None:
    """patchify's order is PatchEmbed's: a conv patch embedding equals a linear map of patches."""
    emb = ImageEmbedder(16, 8, 3, 12, cls_token=False)
    images = torch.randn(2, 3, 16, 16)
    w = emb.patch_embed.proj.weight  # (D, C, P, P) -> (D, P*P*C) in (p, q, c) order
    linear = (
        patchify(images, 8) @ w.permute(0, 2, 3, 1).reshape(12, -1).T + emb.patch_embed.proj.bias
    )
    torch.testing.assert_close(emb.patch_embed(images), linear, atol=1e-5, rtol=1e-5)


def test_sincos_tables() -> None:
    t = sincos_1d(5, 8)
    assert t.shape == (5, 8)
    torch.testing.assert_close(t[3, 1], torch.tensor(math.sin(3 / 10000 ** (1 / 4))))
    torch.testing.assert_close(t[3, 5], torch.tensor(math.cos(3 / 10000 ** (1 / 4))))
    g = sincos_2d((2, 3), 8)  # row half then column half
    torch.testing.assert_close(g[4, :4], sincos_1d(2, 4)[1])
    torch.testing.assert_close(g[4, 4:], sincos_1d(3, 4)[1])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d((2, 2), 6)


def test_text_embedder() -> None:
    torch.manual_seed(0)
    emb = TextEmbedder(50, 16, max_len=6, position="learned", norm=False)
    ids = torch.tensor([[1, 2, 3]])
    ref = emb.word_embeddings.weight[ids[0]] + emb.position_embeddings[:3]
    torch.testing.assert_close(emb(ids)[0], ref)
    fixed = TextEmbedder(50, 16, max_len=6, position="sincos")
    assert not any("position" in k for k in fixed.state_dict())  # derived, never saved
    torch.testing.assert_close(fixed.positions(4, ids.float()), sincos_1d(6, 16)[:4])
    with pytest.raises(ValueError, match="7 tokens is longer than the position table \\(6"):
        emb(torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="must be 'learned' or 'sincos'"):
        TextEmbedder(50, 16, 6, position="rotary")


def test_image_embedder_keep_ids_cls_and_positions() -> None:
    torch.manual_seed(0)
    emb = ImageEmbedder(32, 8, 3, 16, cls_token=True)
    with torch.no_grad():
        emb.pos_embed.normal_()
        emb.cls_token.normal_()
    images = torch.randn(2, 3, 32, 32)
    full, valid, grid = emb(images)
    assert full.shape == (2, 17, 16) and valid is None and grid == (4, 4)
    torch.testing.assert_close(full[:, 0], (emb.cls_token + emb.pos_embed[:, :1])[0].expand(2, -1))
    keep = torch.tensor([[5, 0, 9], [15, 3, -1]])
    kept, valid, _ = emb(images, keep_ids=keep)
    assert kept.shape == (2, 4, 16) and valid.tolist() == [[True] * 4, [True, True, True, False]]
    for b in range(2):
        for j, n in enumerate(keep[b].tolist()):
            if n >= 0:  # each kept patch carries its own grid position
                torch.testing.assert_close(kept[b, 1 + j], full[b, 1 + n])
    with pytest.raises(TypeError, match="integer patch indices"):
        emb(images, keep_ids=keep.float())


def test_position_resampling_uses_timm_and_keeps_cls() -> None:
    from timm.layers import resample_abs_pos_embed

    emb = ImageEmbedder(32, 8, 3, 16)
    with torch.no_grad():
        emb.pos_embed.normal_()
    old = emb.pos_embed.detach().clone()
    ref = resample_abs_pos_embed(old, new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    emb.resize_position_embeddings(48)
    torch.testing.assert_close(emb.pos_embed.detach(), ref)
    torch.testing.assert_close(emb.pos_embed[:, 0].detach(), old[:, 0])


def test_unimodal_tower_masks_padding() -> None:
    torch.manual_seed(0)
    tower = UnimodalTower(1, 16, 2, 32).eval()
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    states, projected = tower(x, valid)
    alone, _ = tower(x[1:, :3])
    torch.testing.assert_close(states[1, :3], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(projected, tower.to_fusion(states))
    with pytest.raises(ValueError, match="at least one layer"):
        UnimodalTower(0, 16, 2, 32)
