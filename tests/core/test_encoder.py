"""The shared encoder: shapes, masks, padding invariance, visible-only encoding, Multiway."""

from __future__ import annotations

import pytest
import torch

from onetower import OneTowerConfig, OneTowerModel

ATOL = 1e-5


def tiny(**overrides) -> OneTowerModel:
    torch.manual_seed(0)
    return OneTowerModel(OneTowerConfig.from_size("tiny", **overrides)).eval()


def inputs(B: int = 3, T: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 512, (B, T), generator=g)
    px = torch.randn(B, 3, 32, 32, generator=g)
    return ids, px


@pytest.mark.parametrize("multiway", [False, True])
@pytest.mark.parametrize("towers", [0, 1])
def test_text_only_image_only_paired_shapes_and_segment_map(multiway: bool, towers: int) -> None:
    m = tiny(multiway=multiway, text_tower_layers=towers, image_tower_layers=towers)
    ids, px = inputs()
    B, T, N = 3, 9, 16
    t = m(input_ids=ids)
    assert t.last_hidden_state.shape == (B, T, 64) and t.pooler_output.shape == (B, 64)
    assert t.modality_slices == {"text": slice(0, T)} and t.cls_positions == {"text": 0}
    assert t.attention_mask is None and t.segment_ids.eq(0).all()

    i = m(pixel_values=px)
    assert i.last_hidden_state.shape == (B, 1 + N, 64)
    assert i.modality_slices["image_patches"] == slice(1, 1 + N) and i.cls_positions == {"image": 0}
    assert i.segment_ids.eq(1).all() and i.image_grid == (4, 4)

    p = m(input_ids=ids, pixel_values=px)
    assert p.last_hidden_state.shape == (B, T + 1 + N, 64)
    assert p.tokens("text").shape == (B, T, 64) and p.tokens("image_patches").shape == (B, N, 64)
    assert p.cls_positions == {"text": 0, "image": T}
    assert p.segment_ids[0].tolist() == [0] * T + [1] * (1 + N)
    torch.testing.assert_close(p.cls("text"), p.last_hidden_state[:, 0])
    assert set(p.unimodal_states) == ({"text", "image"} if towers else set())


def test_second_image_segment_uses_its_own_row() -> None:
    m = tiny(num_segments=3)
    ids, px = inputs()
    a, b = m(input_ids=ids, pixel_values=px), m(input_ids=ids, pixel_values=px, image_segment=2)
    assert b.segment_ids[0, -1] == 2
    assert not torch.allclose(a.pooler_output, b.pooler_output)
    with torch.no_grad():
        m.segment_embeddings.weight[2] = m.segment_embeddings.weight[1]
    torch.testing.assert_close(
        m(input_ids=ids, pixel_values=px, image_segment=2).pooler_output, a.pooler_output
    )
    with pytest.raises(ValueError, match="image_segment 3 is out of range"):
        m(input_ids=ids, pixel_values=px, image_segment=3)


@pytest.mark.parametrize("towers", [0, 1])
def test_per_row_image_segments_equal_one_call_per_segment(towers: int) -> None:
    """NLVR2 encodes the rows of both images in one call, each row with its own segment id."""
    m = tiny(num_segments=3, text_tower_layers=towers, image_tower_layers=towers)
    ids, px = inputs(B=4)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    rows = torch.tensor([1, 2, 2, 1])
    out = m(input_ids=ids, attention_mask=mask, pixel_values=px, image_segment=rows)
    for seg in (1, 2):
        ref = m(input_ids=ids, attention_mask=mask, pixel_values=px, image_segment=seg)
        pick = rows == seg
        torch.testing.assert_close(out.last_hidden_state[pick], ref.last_hidden_state[pick])
        assert out.segment_ids[pick, -1].eq(seg).all()
    assert out.segment_ids[:, 0].eq(0).all()
    with pytest.raises(ValueError, match="image_segment .* is out of range"):
        m(input_ids=ids, pixel_values=px, image_segment=torch.tensor([1, 2, 3, 1]))
    with pytest.raises(ValueError, match="one id per row"):
        m(input_ids=ids, pixel_values=px, image_segment=torch.tensor([1, 2]))


@pytest.mark.parametrize("multiway", [False, True])
@pytest.mark.parametrize("towers", [0, 1])
def test_several_images_per_row_form_one_sequence(multiway: bool, towers: int) -> None:
    """UNITER's triplet: `(B, 2, C, H, W)` gives ``[text ; image ; image2]`` in one pass, each
    image embedded on its own and tagged with its own segment row."""
    m = tiny(num_segments=3, multiway=multiway, text_tower_layers=towers, image_tower_layers=towers)
    with torch.no_grad():  # distinct rows, so a swapped image order would show
        m.segment_embeddings.weight[2].normal_()
    ids, px = inputs(B=3, T=9)
    px2 = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    pair = torch.stack([px, px2], dim=1)  # (B, 2, C, H, W)
    B, T, N = 3, 9, 16
    out = m(input_ids=ids, attention_mask=mask, pixel_values=pair)
    assert out.last_hidden_state.shape == (B, T + 2 * (1 + N), 64)
    assert out.modality_slices["image"] == slice(T, T + 1 + N)
    assert out.modality_slices["image2_patches"] == slice(T + 2 + N, T + 2 + 2 * N)
    assert out.cls_positions == {"text": 0, "image": T, "image2": T + 1 + N}
    assert out.segment_ids[0].tolist() == [0] * T + [1] * (1 + N) + [2] * (1 + N)
    if towers:
        assert out.unimodal_states["image"].shape == (B, 2 * (1 + N), 64)

    # built by hand: each image's embedding (and tower) alone, plus its segment row
    seg = m.segment_embeddings.weight
    valid = mask.bool()
    text = m.text(ids)
    parts = [m.text_tower(text, valid)[1] if towers else text]
    states = []
    for image in (px, px2):
        x = m.image(image, None, None, False)[0]
        if towers:
            states.append(m.image_tower(x, None)[0])
        parts.append(m.image_tower(x, None)[1] if towers else x)
    if towers:
        torch.testing.assert_close(out.unimodal_states["image"], torch.cat(states, dim=1))
    x = torch.cat([parts[0] + seg[0], parts[1] + seg[1], parts[2] + seg[2]], dim=1)
    key = torch.cat([valid, valid.new_ones(B, 2 * (1 + N))], dim=1)[:, None, None, :]
    ref = m.encoder(x, key, T)[0]
    torch.testing.assert_close(out.last_hidden_state, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.pooler_output, m.pooler(ref[:, 0]), atol=ATOL, rtol=0)

    # swapping the images and their segment rows moves the image states, nothing else
    with torch.no_grad():
        m.segment_embeddings.weight[[1, 2]] = m.segment_embeddings.weight[[2, 1]].clone()
    swapped = m(input_ids=ids, attention_mask=mask, pixel_values=pair.flip(1))
    torch.testing.assert_close(swapped.pooler_output, out.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(swapped.tokens("image2"), out.tokens("image"), atol=ATOL, rtol=0)

    one = m(input_ids=ids, attention_mask=mask, pixel_values=px[:, None])
    torch.testing.assert_close(
        one.last_hidden_state,
        m(input_ids=ids, attention_mask=mask, pixel_values=px).last_hidden_state,
    )
    with pytest.raises(ValueError, match="need segment ids up to 3, but the model has 3"):
        m(input_ids=ids, pixel_values=torch.stack([px, px2, px], dim=1))
    for bad in (
        dict(image_segment=torch.tensor([1, 2, 1])),
        dict(fuse=False),
        dict(bool_masked_pos=torch.zeros(B, N, dtype=torch.bool)),
    ):
        with pytest.raises(ValueError, match=r"several images per row \(pixel_values of shape"):
            m(input_ids=ids, pixel_values=pair, **bad)


@pytest.mark.parametrize("with_image", [False, True])
@pytest.mark.parametrize("multiway", [False, True])
def test_padding_does_not_change_real_tokens(with_image: bool, multiway: bool) -> None:
    """A padded batch gives each sample the same real-token states as running it alone."""
    m = tiny(multiway=multiway)
    ids, px = inputs(B=3, T=10)
    lengths = [10, 6, 3]
    mask = torch.zeros(3, 10, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)  # padding id 0
    batch = m(input_ids=ids, attention_mask=mask, pixel_values=px if with_image else None)
    assert (
        batch.attention_mask is not None
        and batch.attention_mask.shape[1] == batch.last_hidden_state.shape[1]
    )
    for b, n in enumerate(lengths):
        alone = m(input_ids=ids[b : b + 1, :n], pixel_values=px[b : b + 1] if with_image else None)
        torch.testing.assert_close(
            batch.tokens("text")[b, :n], alone.tokens("text")[0], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            batch.pooler_output[b], alone.pooler_output[0], atol=ATOL, rtol=0
        )
        if with_image:
            torch.testing.assert_close(
                batch.tokens("image")[b], alone.tokens("image")[0], atol=ATOL, rtol=0
            )


@pytest.mark.parametrize("towers", [0, 1])
def test_dropped_patches_equal_full_encoding_over_the_same_tokens(towers: int) -> None:
    """Encoding only kept patches == encoding all patches with the dropped ones masked out."""
    m = tiny(text_tower_layers=towers, image_tower_layers=towers)
    ids, px = inputs()
    g = torch.Generator().manual_seed(1)
    keep = torch.stack([torch.randperm(16, generator=g)[:5] for _ in range(3)])  # (B, 5)
    dropped = m(input_ids=ids, pixel_values=px, image_keep_ids=keep)
    assert dropped.tokens("image_patches").shape == (3, 5, 64)
    patch_mask = torch.zeros(3, 16, dtype=torch.bool).scatter_(1, keep, True)
    full = m(input_ids=ids, pixel_values=px, patch_attention_mask=patch_mask)
    kept_full = torch.gather(full.tokens("image_patches"), 1, keep[..., None].expand(-1, -1, 64))
    torch.testing.assert_close(dropped.tokens("image_patches"), kept_full, atol=ATOL, rtol=0)
    torch.testing.assert_close(dropped.tokens("text"), full.tokens("text"), atol=ATOL, rtol=0)
    torch.testing.assert_close(dropped.pooler_output, full.pooler_output, atol=ATOL, rtol=0)


def test_keep_ids_padding_slots_are_masked() -> None:
    """Per-sample kept counts: -1 slots are never attended and do not change real tokens."""
    m = tiny()
    ids, px = inputs(B=2)
    keep = torch.tensor([[3, 7, 9, 12], [1, 4, -1, -1]])
    out = m(input_ids=ids, pixel_values=px, image_keep_ids=keep)
    assert out.token_mask("image_patches").tolist() == [[True] * 4, [True, True, False, False]]
    alone = m(input_ids=ids[1:], pixel_values=px[1:], image_keep_ids=keep[1:, :2])
    torch.testing.assert_close(out.pooler_output[1], alone.pooler_output[0], atol=ATOL, rtol=0)


def test_mask_token_replaces_masked_patches_only() -> None:
    m = tiny(use_mask_token=True)
    _, px = inputs(B=1)
    masked = torch.zeros(1, 16, dtype=torch.bool)
    masked[0, [2, 5]] = True
    px2 = px.clone()
    px2[..., 0:8, 16:24] = 7.0  # patch 2 (row 0, col 2): hidden behind the mask token
    a = m.image(px, masked_patches=masked)[0]
    b = m.image(px2, masked_patches=masked)[0]
    torch.testing.assert_close(a, b)  # the masked patch's pixels do not leak
    c = m.image(px2)[0]
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="no mask token"):
        tiny().image(px, masked_patches=masked)


def test_multiway_routes_each_token_to_its_modality() -> None:
    m = tiny(multiway=True, num_hidden_layers=1)
    block = m.encoder.blocks[0]
    assert len(block.mlp) == 2 and len(block.norm1) == 2
    ids, px = inputs()
    x = torch.randn(3, 26, 64)
    T = 9
    from onetower.layers import IMAGE_EXPERT, TEXT_EXPERT, route

    out = route(block.mlp, x, T)
    torch.testing.assert_close(out[:, :T], block.mlp[TEXT_EXPERT](x[:, :T]))
    torch.testing.assert_close(out[:, T:], block.mlp[IMAGE_EXPERT](x[:, T:]))

    # gradients: a text-only pass never touches image experts, an image-only one never text's
    for kwargs, idle in (({"input_ids": ids}, IMAGE_EXPERT), ({"pixel_values": px}, TEXT_EXPERT)):
        m.zero_grad(set_to_none=True)
        m(**kwargs).last_hidden_state.sum().backward()
        assert all(p.grad is None for p in block.mlp[idle].parameters())
        assert all(p.grad is not None for p in block.mlp[1 - idle].parameters())

    # perturbing the image expert changes image tokens' FFN but leaves text tokens' input to it
    with torch.no_grad():
        for p in block.mlp[IMAGE_EXPERT].parameters():
            p.add_(1.0)
    out2 = route(block.mlp, x, T)
    torch.testing.assert_close(out2[:, :T], out[:, :T])
    assert not torch.allclose(out2[:, T:], out[:, T:])


def test_fuse_false_returns_tower_states() -> None:
    m = tiny(text_tower_layers=1, image_tower_layers=1)
    ids, px = inputs()
    out = m(input_ids=ids, pixel_values=px, fuse=False)
    torch.testing.assert_close(out.tokens("text"), out.unimodal_states["text"])
    torch.testing.assert_close(out.pooler_output, out.unimodal_states["text"][:, 0])
    with pytest.raises(ValueError, match="needs a unimodal tower"):
        tiny()(input_ids=ids, fuse=False)


def test_hidden_states_and_gradient_checkpointing() -> None:
    m = tiny()
    ids, px = inputs()
    out = m(input_ids=ids, pixel_values=px, output_hidden_states=True)
    assert len(out.hidden_states) == m.config.num_hidden_layers + 1
    m.train()
    ref = torch.autograd.grad(
        m(input_ids=ids, pixel_values=px).pooler_output.sum(), m.text.word_embeddings.weight
    )[0]
    m.activation_checkpointing_enable()
    assert m.encoder.gradient_checkpointing
    ckpt = torch.autograd.grad(
        m(input_ids=ids, pixel_values=px).pooler_output.sum(), m.text.word_embeddings.weight
    )[0]
    torch.testing.assert_close(ckpt, ref)


def test_sincos_positions_and_image_only_mean_pool() -> None:
    m = tiny(text_position="sincos", image_position="sincos", image_cls_token=False)
    assert m.image.pos_embed is None and "position_embeddings" not in dict(m.named_parameters())
    ids, px = inputs()
    out = m(pixel_values=px)
    assert out.cls_positions == {} and out.last_hidden_state.shape == (3, 16, 64)
    torch.testing.assert_close(out.pooler_output, m.pooler(out.last_hidden_state.mean(1)))
    p = m(input_ids=ids, pixel_values=px)
    assert p.modality_slices["image"] == p.modality_slices["image_patches"]


def test_bad_inputs_name_the_problem() -> None:
    m = tiny()
    ids, px = inputs()
    with pytest.raises(ValueError, match="give input_ids, pixel_values or both"):
        m()
    with pytest.raises(ValueError, match="17 tokens is longer than the position table \\(16"):
        m(input_ids=torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="have 1 channels, the model expects 3"):
        m(pixel_values=torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        m(pixel_values=torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="does not match the model's 4x4 grid"):
        m(pixel_values=torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        m(input_ids=ids, attention_mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match="patch_attention_mask has shape"):
        m(pixel_values=px, patch_attention_mask=torch.ones(3, 9, dtype=torch.bool))


def test_other_grid_sizes_by_resampling_positions() -> None:
    m = tiny()
    px = torch.randn(2, 3, 48, 64)
    out = m(pixel_values=px, interpolate_pos_encoding=True)
    assert out.image_grid == (6, 8) and out.tokens("image_patches").shape == (2, 48, 64)
    m.image.resize_position_embeddings(48)
    assert m.image.pos_embed.shape == (1, 1 + 36, 64) and m.image.grid == (6, 6)
    assert m(pixel_values=torch.randn(1, 3, 48, 48)).image_grid == (6, 6)


def test_seq2seq_attention_pattern():
    """``attention="seq2seq"``: a text token's state depends on the image and the text up to
    it, never on later text; image states never depend on the text."""
    torch.manual_seed(0)
    model = OneTowerModel(OneTowerConfig.from_size("tiny", num_hidden_layers=2)).eval()
    ids = torch.randint(5, 100, (2, 8))
    pixels = torch.randn(2, 3, 32, 32)
    out = model(input_ids=ids, pixel_values=pixels, attention="seq2seq")
    later = ids.clone()
    later[:, 5:] = torch.randint(5, 100, (2, 3))
    changed = model(input_ids=later, pixel_values=pixels, attention="seq2seq")
    torch.testing.assert_close(out.tokens("text")[:, :5], changed.tokens("text")[:, :5])
    assert not torch.allclose(out.tokens("text")[:, 5:], changed.tokens("text")[:, 5:])
    torch.testing.assert_close(out.tokens("image"), changed.tokens("image"))
    bidirectional = model(input_ids=later, pixel_values=pixels)
    assert not torch.allclose(bidirectional.tokens("image"), out.tokens("image"))
    with pytest.raises(ValueError, match="attention must be one of"):
        model(input_ids=ids, attention="causal")
