"""ViLT parity: a random transformers ViltModel converted into OneTowerModel gives the same
text states, image states (per patch position) and pooled output to 1e-5."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForVisualQuestionAnswering,
    ViltConfig,
    ViltForImagesAndTextClassification,
    ViltForQuestionAnswering,
    ViltModel,
)

from onetower import (
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
    OneTowerModel,
    convert_vilt_to_onetower,
)
from onetower.convert_vilt import convert_vilt_state_dict

ATOL = 1e-5


def vilt_config(**kw) -> ViltConfig:
    base = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=300,
        max_position_embeddings=12,
        image_size=32,
        patch_size=8,
    )
    return ViltConfig(**{**base, **kw})


def match_patches(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """ViLT visits patches in a random order: pair each of our patch states (grid order) with
    its nearest ViLT patch state and check the pairing is a permutation. Returns theirs
    reordered into our grid order, `(B, N, D)`."""
    idx = torch.cdist(ours, theirs).argmin(-1)  # (B, N)
    for row in idx:
        assert sorted(row.tolist()) == list(range(ours.shape[1])), "pairing is not a permutation"
    return torch.gather(theirs, 1, idx[..., None].expand_as(theirs))


@pytest.mark.parametrize("segments,image_segment", [(2, 1), (3, 2)])
def test_vilt_parity(segments: int, image_segment: int) -> None:
    torch.manual_seed(0)
    vilt = ViltModel(vilt_config(modality_type_vocab_size=segments)).eval()
    # randomise every parameter (LayerNorms and biases start at 1/0 otherwise)
    with torch.no_grad():
        for p in vilt.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = convert_vilt_to_onetower(vilt).eval()
    assert ours.config.num_segments == segments and ours.config.layer_norm_eps == 1e-12

    g = torch.Generator().manual_seed(1)
    B, T = 3, 10
    ids = torch.randint(0, 300, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    px = torch.randn(B, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = vilt(
            input_ids=ids, attention_mask=mask, pixel_values=px, image_token_type_idx=image_segment
        )
        out = ours(input_ids=ids, attention_mask=mask, pixel_values=px, image_segment=image_segment)
    real = mask.bool()
    torch.testing.assert_close(
        out.tokens("text")[real], ref.last_hidden_state[:, :T][real], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.cls("image"), ref.last_hidden_state[:, T], atol=ATOL, rtol=0)
    theirs = match_patches(out.tokens("image_patches"), ref.last_hidden_state[:, T + 1 :])
    torch.testing.assert_close(out.tokens("image_patches"), theirs, atol=ATOL, rtol=0)


def test_vqa_model_converts_with_its_head_and_reloads(tmp_path) -> None:
    labels = {0: "yes", 1: "no", 2: "2", 3: "red", 4: "cat"}
    qa = ViltForQuestionAnswering(vilt_config(id2label=labels)).eval()
    ours = convert_vilt_to_onetower(qa).eval()
    assert isinstance(ours, OneTowerForQuestionAnswering) and ours.config.id2label == labels
    ids = torch.randint(0, 300, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padding
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = qa(input_ids=ids, attention_mask=mask, pixel_values=px).logits
        got = ours(input_ids=ids, attention_mask=mask, pixel_values=px).logits
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    ours.save_pretrained(tmp_path)
    back = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    assert type(back) is OneTowerForQuestionAnswering and back.config.id2label == labels
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids, attention_mask=mask, pixel_values=px).logits, got)


def test_nlvr2_model_converts_with_its_head_and_reloads(tmp_path) -> None:
    cfg = vilt_config(modality_type_vocab_size=3, num_images=2, id2label={0: "False", 1: "True"})
    nlvr2 = ViltForImagesAndTextClassification(cfg).eval()
    ours = convert_vilt_to_onetower(nlvr2).eval()
    assert isinstance(ours, OneTowerForImagesAndTextClassification)
    ids = torch.randint(0, 300, (4, 6))
    px = torch.randn(4, 2, 3, 32, 32)
    with torch.no_grad():
        ref = nlvr2(input_ids=ids, pixel_values=px).logits
        got = ours(input_ids=ids, pixel_values=px).logits
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    ours.save_pretrained(tmp_path)
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(back) is OneTowerForImagesAndTextClassification
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids, pixel_values=px).logits, got)
    assert type(convert_vilt_to_onetower(nlvr2, encoder_only=True)) is OneTowerModel


def test_task_model_base_is_converted_and_bad_inputs_are_named() -> None:
    qa = ViltForQuestionAnswering(vilt_config(num_labels=5)).eval()
    ours = convert_vilt_to_onetower(qa, encoder_only=True).eval()
    ids = torch.randint(0, 300, (2, 6))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(input_ids=ids, pixel_values=px).pooler_output,
            qa.vilt(input_ids=ids, pixel_values=px).pooler_output,
            atol=ATOL,
            rtol=0,
        )
    with pytest.raises(TypeError, match="expected a transformers ViltModel"):
        convert_vilt_to_onetower(torch.nn.Linear(2, 2))
    sd = dict(ViltModel(vilt_config()).state_dict())
    del sd["pooler.dense.weight"]
    with pytest.raises(KeyError, match="no 'pooler.dense.weight'"):
        convert_vilt_state_dict(sd, 2)
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        convert_vilt_to_onetower(ViltModel(vilt_config(hidden_act="relu")))
