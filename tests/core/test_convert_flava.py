"""FLAVA import: a random tiny transformers FLAVA and its onetower conversion give the same
unimodal, multimodal, contrastive and ITM outputs (1e-5), offline; the CLI never overwrites."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertModel,
    FlavaConfig,
    FlavaForPreTraining,
    FlavaImageCodebookConfig,
    FlavaImageConfig,
    FlavaModel,
    FlavaMultimodalConfig,
    FlavaTextConfig,
)

from onetower import OneTowerModel
from onetower.convert_flava import (
    convert_flava_heads,
    convert_flava_to_onetower,
    flava_config_to_onetower,
    main,
)
from onetower.objectives.contrastive import ContrastiveHead
from onetower.objectives.mlm import MLMHead

TOL = 1e-5


def tiny_flava_config(**text: object) -> FlavaConfig:
    common = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, layer_norm_eps=1e-12)
    return FlavaConfig(
        text_config=FlavaTextConfig(
            **{
                **common,
                "num_hidden_layers": 1,
                "vocab_size": 50,
                "max_position_embeddings": 16,
                **text,
            }
        ).to_dict(),
        image_config=FlavaImageConfig(
            **common, num_hidden_layers=2, image_size=32, patch_size=8, vocab_size=40
        ).to_dict(),
        multimodal_config=FlavaMultimodalConfig(**common, num_hidden_layers=1).to_dict(),
        image_codebook_config=FlavaImageCodebookConfig(hidden_size=8, vocab_size=40).to_dict(),
        hidden_size=32,
        projection_dim=24,
    )


def randomize(model: torch.nn.Module) -> None:
    """Every parameter random (zero-initialised CLS / positions would hide a mapping error)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def inputs(config: FlavaConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.randn(3, 3, 32, 32, generator=g),
    }


@pytest.fixture(scope="module")
def flava_pair() -> tuple[FlavaForPreTraining, OneTowerModel]:
    torch.manual_seed(0)
    src = FlavaForPreTraining(tiny_flava_config()).eval()
    randomize(src)
    return src, convert_flava_to_onetower(src).eval()


def test_config_mismatch_names_both_values() -> None:
    with pytest.raises(ValueError, match=r"intermediate_size differs.*'text': 48.*'image': 64"):
        flava_config_to_onetower(tiny_flava_config(intermediate_size=48))


def test_unimodal_multimodal_contrastive_itm_parity(flava_pair) -> None:
    src, ours = flava_pair
    x = inputs(src.config)
    with torch.no_grad():
        ref = src.flava(**x)
        text = ours(input_ids=x["input_ids"], attention_mask=x["attention_mask"], fuse=False)
        image = ours(pixel_values=x["pixel_values"], fuse=False)
        both = ours(**x)
    torch.testing.assert_close(text.unimodal_states["text"], ref.text_embeddings, atol=TOL, rtol=0)
    torch.testing.assert_close(
        image.unimodal_states["image"], ref.image_embeddings, atol=TOL, rtol=0
    )
    # FLAVA fuses [CLS ; image ; text], onetower [CLS ; text ; image]
    mm = ref.multimodal_embeddings
    n_img = ref.image_embeddings.shape[1]
    mm_ours_order = torch.cat([mm[:, :1], mm[:, 1 + n_img :], mm[:, 1 : 1 + n_img]], dim=1)
    torch.testing.assert_close(both.last_hidden_state, mm_ours_order, atol=TOL, rtol=0)
    assert both.modality_slices["fusion"] == slice(0, 1)
    assert both.modality_slices["text"] == slice(1, 8)
    # contrastive: FLAVA's projected, normalised CLS features and its temperature
    heads = convert_flava_heads(src)
    contrastive = ContrastiveHead(32, 24, bias=True)
    contrastive.load_state_dict(
        {
            k.removeprefix("contrastive."): v
            for k, v in heads.items()
            if k.startswith("contrastive.")
        }
    )
    with torch.no_grad():
        img, txt = contrastive.embed(text, image)
    f = src.flava
    want_img = F.normalize(f.image_projection(ref.image_embeddings[:, 0]), dim=-1)
    want_txt = F.normalize(f.text_projection(ref.text_embeddings[:, 0]), dim=-1)
    torch.testing.assert_close(img, want_img, atol=TOL, rtol=0)
    torch.testing.assert_close(txt, want_txt, atol=TOL, rtol=0)
    assert contrastive.logit_scale.item() == pytest.approx(f.logit_scale.item())
    # ITM: FLAVA's head (own pooler + classifier) = onetower's pooler + itm classifier
    with torch.no_grad():
        want = src.itm_head(mm)
        got = F.linear(
            both.pooler_output, heads["itm.classifier.weight"], heads["itm.classifier.bias"]
        )
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    # MLM: FLAVA's masked multimodal text head on the fused text = onetower's untied MLM head
    mlm = MLMHead(ours.get_input_embeddings(), tied=False)
    mlm.load_state_dict(
        {k.removeprefix("mlm."): v for k, v in heads.items() if k.startswith("mlm.")}
    )
    with torch.no_grad():
        want = src.mmm_text_head(mm[:, 1 + n_img :])
        got = mlm.logits(both.tokens("text"))
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_flava_model_pooler_parity() -> None:
    torch.manual_seed(0)
    src = FlavaModel(tiny_flava_config()).eval()
    randomize(src)
    ours = convert_flava_to_onetower(src).eval()
    x = inputs(src.config)
    with torch.no_grad():
        ref = src(**x)
        got = ours(**x)
    torch.testing.assert_close(
        got.pooler_output, ref.multimodal_output.pooler_output, atol=TOL, rtol=0
    )
    assert set(convert_flava_heads(src)) == {
        f"contrastive.{k}"
        for k in (
            "text_proj.weight",
            "text_proj.bias",
            "image_proj.weight",
            "image_proj.bias",
            "logit_scale",
        )
    }


def test_cli_writes_model_and_heads_and_never_overwrites(flava_pair, tmp_path, capsys) -> None:
    src, ours = flava_pair
    src.save_pretrained(tmp_path / "flava")
    dst = tmp_path / "onetower"
    main([str(tmp_path / "flava"), str(dst)])
    printed = capsys.readouterr().out
    assert "heads ['contrastive', 'itm', 'mlm']" in printed and "not imported: mlm_head" in printed
    loaded = OneTowerModel.from_pretrained(dst).eval()
    x = inputs(src.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).last_hidden_state, ours(**x).last_hidden_state)
    assert set(load_file(dst / "objectives.safetensors")) == set(convert_flava_heads(src))
    before = sorted(p.name for p in dst.iterdir())
    with pytest.raises(FileExistsError, match="never overwrite"):
        main([str(tmp_path / "flava"), str(dst)])
    assert sorted(p.name for p in dst.iterdir()) == before


def test_cli_refuses_another_model_kind(tmp_path) -> None:
    BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=50,
        )
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(SystemExit, match="holds a 'bert' model, not FLAVA"):
        main([str(tmp_path / "bert"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
