"""ViLT's patch sampling (``max_image_patches``, ViLT's ``max_image_len``): at most that many
real patches per image, drawn as transformers' ``ViltModel`` draws them, fillers masked."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import ViltModel

from onetower import OneTowerConfig, OneTowerModel, convert_vilt_to_onetower
from onetower.convert_vilt import vilt_config_to_onetower

from .test_convert_vilt import vilt_config
from .test_convert_vilt_fidelity import randomise

ATOL = 1e-5
SIZES = [(40, 48), (32, 24), (24, 40), (16, 16)]  # 30, 12, 15 and 4 real patches of 8 px


def padded_batch(sizes: list[tuple[int, int]], seed: int = 1):
    """Images of ``sizes`` padded bottom / right to the largest, as ViltProcessor pads."""
    g = torch.Generator().manual_seed(seed)
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    px = torch.zeros(len(sizes), 3, H, W)
    mask = torch.zeros(len(sizes), H, W, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        px[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[i, :h, :w] = 1
    ids = torch.randint(0, 300, (len(sizes), 9), generator=g)
    return ids, px, mask


def tiny(**kw) -> OneTowerModel:
    torch.manual_seed(0)
    return OneTowerModel(OneTowerConfig.from_size("tiny", **kw)).eval()


@pytest.mark.parametrize("seed", [5, 6])
def test_converted_vilt_samples_the_patches_transformers_samples(seed: int) -> None:
    limit = 12  # image 0 has 30 real patches and image 2 15 (sampled), images 1 and 3 fewer
    torch.manual_seed(0)
    vilt = randomise(ViltModel(vilt_config(max_image_length=limit)))
    ours = convert_vilt_to_onetower(vilt).eval()
    assert ours.config.max_image_patches == limit
    ids, px, pixel_mask = padded_batch(SIZES)
    B, T = ids.shape
    with torch.no_grad():
        torch.manual_seed(seed)  # transformers' selection: patch_index (B, Nk, 2) and its mask
        _, vmask, (where, (_, gw)) = vilt.embeddings.visual_embed(px, pixel_mask, limit)
        torch.manual_seed(seed)
        ref = vilt(input_ids=ids, pixel_values=px, pixel_mask=pixel_mask)
        after_vilt = torch.get_rng_state()
        torch.manual_seed(seed)
        out = ours(input_ids=ids, pixel_values=px, pixel_mask=pixel_mask)
    # the same torch.multinomial calls: the generator ends where transformers' ends
    assert torch.equal(torch.get_rng_state(), after_vilt)
    keep = out.image_keep_ids  # (B, 12): grid order, -1 fillers
    assert keep.shape == (B, limit)
    patch_mask = out.token_mask("image_patches")
    assert torch.equal(patch_mask, keep >= 0)
    assert patch_mask.sum(1).tolist() == [12, 12, 12, 4]
    theirs_ids = where[..., 0] * gw + where[..., 1]  # (B, Nk) grid index of each ViLT token
    theirs_real = vmask[:, 1:].bool()
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.tokens("text"), ref.last_hidden_state[:, :T], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.cls("image"), ref.last_hidden_state[:, T], atol=ATOL, rtol=0)
    for i in range(B):
        # the same kept set; ours in grid order, ViLT's in draw order: compare per grid index
        mine_ids = keep[i][patch_mask[i]]
        ids_i = theirs_ids[i][theirs_real[i]]
        order = ids_i.argsort()
        assert torch.equal(mine_ids, ids_i[order])
        theirs = ref.last_hidden_state[i, T + 1 :][theirs_real[i]][order]
        mine = out.tokens("image_patches")[i][patch_mask[i]]
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_limit_is_kept_and_only_masked_slots_fill() -> None:
    m = tiny(max_image_patches=6)
    _, px, pixel_mask = padded_batch([(32, 32), (16, 24), (8, 16)])  # 16, 6, 2 real patches
    real = torch.nn.functional.interpolate(pixel_mask[:, None].float(), size=(4, 4))
    real = real.flatten(1).bool()  # (B, N) real patches
    with torch.no_grad():
        out = m(pixel_values=px, pixel_mask=pixel_mask)
    keep, mask = out.image_keep_ids, out.token_mask("image_patches")
    assert keep.shape == (3, 6) and out.tokens("image_patches").shape[1] == 6
    for i, n_real in enumerate([16, 6, 2]):
        kept = keep[i][keep[i] >= 0]
        assert len(kept) == min(6, n_real)
        assert torch.equal(kept, kept.unique())  # distinct, grid order
        assert real[i][kept].all()  # never a padding patch
        assert torch.equal(mask[i], keep[i] >= 0)  # fillers (-1) never attended
    assert kept.tolist() == real[2].nonzero()[:, 0].tolist()  # fewer than the limit: all kept
    # without a pixel mask: min(limit, N) distinct patches per image, no filler
    with torch.no_grad():
        out = m(pixel_values=torch.randn(4, 3, 32, 32))
    assert out.image_keep_ids.shape == (4, 6) and out.attention_mask.all()
    assert all(len(row.unique()) == 6 for row in out.image_keep_ids)


def test_fillers_change_nothing_when_no_image_exceeds_the_limit() -> None:
    m = tiny()
    _, px, pixel_mask = padded_batch([(24, 32), (16, 24), (8, 16)])  # 12, 6, 2 real patches
    ids = torch.randint(5, 512, (3, 7))
    with torch.no_grad():
        off = m(input_ids=ids, pixel_values=px, pixel_mask=pixel_mask)
        m.config.max_image_patches = 12  # read at each forward
        on = m(input_ids=ids, pixel_values=px, pixel_mask=pixel_mask)
    # every real patch is kept, in grid order: the real tokens are today's, fillers masked
    torch.testing.assert_close(on.pooler_output, off.pooler_output, atol=1e-6, rtol=0)
    torch.testing.assert_close(on.tokens("text"), off.tokens("text"), atol=1e-6, rtol=0)
    for i in range(3):
        mine = on.tokens("image_patches")[i][on.token_mask("image_patches")[i]]
        today = off.tokens("image_patches")[i][off.token_mask("image_patches")[i]]
        torch.testing.assert_close(mine, today, atol=1e-6, rtol=0)


def test_option_off_is_todays_path_with_no_draw_and_no_sync() -> None:
    m = tiny()
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(5, 512, (2, 7))
    m(input_ids=ids, pixel_values=px)  # first call: lazy tables
    rng = torch.get_rng_state()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        off = m(input_ids=ids, pixel_values=px)
    assert torch.equal(torch.get_rng_state(), rng)  # eval draws nothing: deterministic
    names = {e.name for e in prof.events()}
    assert not names & {"aten::multinomial", "aten::item", "aten::_local_scalar_dense"}
    assert off.image_keep_ids is None and off.attention_mask is None
    m.config.max_image_patches = 16  # all 16 patches kept, in grid order: the same tokens
    with torch.no_grad():
        on = m(input_ids=ids, pixel_values=px)
    assert torch.equal(on.image_keep_ids, torch.arange(16).expand(2, -1))
    torch.testing.assert_close(on.last_hidden_state, off.last_hidden_state, atol=1e-6, rtol=0)


def test_eval_samples_too_and_a_seed_repeats_it() -> None:
    m = tiny(max_image_patches=4)
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(3)
        a = m(pixel_values=px)
        b = m(pixel_values=px)
        torch.manual_seed(3)
        c = m(pixel_values=px)
    assert not torch.equal(a.image_keep_ids, b.image_keep_ids)  # ViLT samples in eval
    assert torch.equal(a.image_keep_ids, c.image_keep_ids)
    torch.testing.assert_close(a.pooler_output, c.pooler_output, atol=0, rtol=0)


@pytest.mark.parametrize("value", [0, -3])
def test_bad_value_names_the_field(value: int) -> None:
    with pytest.raises(ValueError, match="max_image_patches must be > 0"):
        OneTowerConfig.from_size("tiny", max_image_patches=value)
    if value == 0:
        with pytest.raises(ValueError, match="max_image_length=0"):
            vilt_config_to_onetower(vilt_config(max_image_length=0))


def test_converter_carries_max_image_length_and_saves_it(tmp_path) -> None:
    assert vilt_config_to_onetower(vilt_config()).max_image_patches is None  # -1: every patch
    assert vilt_config_to_onetower(vilt_config(max_image_length=200)).max_image_patches == 200
    m = tiny(max_image_patches=5)
    m.save_pretrained(tmp_path)
    assert OneTowerModel.from_pretrained(tmp_path).config.max_image_patches == 5


def test_choosing_patches_twice_is_an_error() -> None:
    m = tiny(max_image_patches=4, use_mask_token=True)
    px = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="image_keep_ids given to a model with max_image_patches"):
        m(pixel_values=px, image_keep_ids=torch.arange(8).expand(2, -1))
    with pytest.raises(ValueError, match="bool_masked_pos given to a model with max_image_pat"):
        m(pixel_values=px, bool_masked_pos=torch.zeros(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="several images per row .* max_image_patches=4"):
        m(pixel_values=torch.randn(2, 2, 3, 32, 32), input_ids=torch.ones(2, 3, dtype=torch.long))
    # a patch attention mask is gathered by the sampled ids, like explicit ones
    patch_mask = torch.ones(2, 16, dtype=torch.bool)
    patch_mask[:, 8:] = False
    with torch.no_grad():
        out = m(pixel_values=px, patch_attention_mask=patch_mask)
    assert torch.equal(out.token_mask("image_patches"), out.image_keep_ids < 8)


def test_unpadded_batch_samples_as_vilt_does() -> None:
    torch.manual_seed(0)
    vilt = randomise(ViltModel(vilt_config(max_image_length=10)))  # 10 of the 16 patches
    ours = convert_vilt_to_onetower(vilt).eval()
    ids, px = torch.randint(0, 300, (3, 6)), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        ref = vilt(input_ids=ids, pixel_values=px)  # transformers fills in an all-ones mask
        after_vilt = torch.get_rng_state()
        torch.manual_seed(7)
        out = ours(input_ids=ids, pixel_values=px)
    assert torch.equal(torch.get_rng_state(), after_vilt)
    assert out.image_keep_ids.shape == (3, 10)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.tokens("text"), ref.last_hidden_state[:, :6], atol=ATOL, rtol=0)


def test_nlvr2_pair_method_samples_each_image_as_vilt_does() -> None:
    from transformers import ViltForImagesAndTextClassification

    torch.manual_seed(0)
    config = vilt_config(max_image_length=10, num_images=2, modality_type_vocab_size=3)
    vilt = randomise(ViltForImagesAndTextClassification(config))
    ours = convert_vilt_to_onetower(vilt).eval()
    ids, px = torch.randint(0, 300, (3, 6)), torch.randn(3, 2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(8)  # ViLT: image 1 of every row, then image 2: our row order too
        ref = vilt(input_ids=ids, pixel_values=px).logits
        after_vilt = torch.get_rng_state()
        torch.manual_seed(8)
        got = ours(input_ids=ids, pixel_values=px).logits
    assert torch.equal(torch.get_rng_state(), after_vilt)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
