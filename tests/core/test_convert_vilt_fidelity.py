"""ViLT at full fidelity: padded non-square batches (``pixel_mask``, positions resampled per
image) give transformers' outputs, and the MLM / ITM heads come with the encoder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import ViltForImageAndTextRetrieval, ViltForMaskedLM, ViltModel

from onetower import OneTowerModel, convert_vilt_to_onetower
from onetower.convert_io import HEADS_FILE, save_converted
from onetower.convert_vilt import convert_vilt_heads, main
from onetower.objectives import ITMHead, MLMHead

from .test_convert_vilt import vilt_config

ATOL = 1e-5


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # LayerNorms and biases start at 1 / 0 otherwise
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def padded_batch(sizes: list[tuple[int, int]], g: torch.Generator):
    """Images of ``sizes`` padded bottom / right to the largest, as ViltProcessor pads."""
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    px = torch.zeros(len(sizes), 3, H, W)
    mask = torch.zeros(len(sizes), H, W, dtype=torch.long)
    for i, (h, w) in enumerate(sizes):
        px[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[i, :h, :w] = 1
    return px, mask


def test_padded_non_square_batch_matches_vilt() -> None:
    torch.manual_seed(0)
    vilt = randomise(ViltModel(vilt_config()))
    ours = convert_vilt_to_onetower(vilt).eval()
    g = torch.Generator().manual_seed(1)
    sizes = [(40, 48), (32, 24), (24, 40), (16, 16)]  # the largest is not square either
    px, pixel_mask = padded_batch(sizes, g)
    B, T = len(sizes), 9
    ids = torch.randint(0, 300, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        ref = vilt(input_ids=ids, attention_mask=mask, pixel_values=px, pixel_mask=pixel_mask)
        out = ours(input_ids=ids, attention_mask=mask, pixel_values=px, pixel_mask=pixel_mask)
    real = mask.bool()
    torch.testing.assert_close(
        out.tokens("text")[real], ref.last_hidden_state[:, :T][real], atol=ATOL, rtol=0
    )
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.cls("image"), ref.last_hidden_state[:, T], atol=ATOL, rtol=0)
    patch_mask = out.token_mask("image_patches")  # (B, 5 * 6): the real patches of each image
    assert patch_mask.sum(1).tolist() == [(h // 8) * (w // 8) for h, w in sizes]
    for i in range(B):
        # ViLT lists the real patches first (in a random order for the largest image), then
        # sampled padding patches that attention ignores
        mine = out.tokens("image_patches")[i][patch_mask[i]]  # (n_i, D), grid order
        theirs = ref.last_hidden_state[i, T + 1 : T + 1 + len(mine)]
        idx = torch.cdist(mine, theirs).argmin(-1)
        assert sorted(idx.tolist()) == list(range(len(mine)))
        torch.testing.assert_close(mine, theirs[idx], atol=ATOL, rtol=0)


def test_unpadded_batch_is_unchanged_by_an_all_ones_pixel_mask() -> None:
    ours = convert_vilt_to_onetower(randomise(ViltModel(vilt_config()))).eval()
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 300, (2, 5))
    with torch.no_grad():
        a = ours(input_ids=ids, pixel_values=px).last_hidden_state
        b = ours(input_ids=ids, pixel_values=px, pixel_mask=torch.ones(2, 32, 32)).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="pixel_mask has shape"):
        ours(input_ids=ids, pixel_values=px, pixel_mask=torch.ones(2, 16, 32))


def test_mlm_head_imports_with_the_encoder(tmp_path) -> None:
    torch.manual_seed(0)
    vilt = randomise(ViltForMaskedLM(vilt_config()))
    vilt.tie_weights()  # randomise() moved the decoder's (shared) tensor too; keep it tied
    ours = convert_vilt_to_onetower(vilt).eval()
    heads = convert_vilt_heads(vilt)
    head = MLMHead(ours.get_input_embeddings())
    head.load_state_dict({k.removeprefix("mlm."): v for k, v in heads.items()})
    ids = torch.randint(0, 300, (2, 7))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vilt(input_ids=ids, pixel_values=px).logits  # (B, T, V)
        states = ours(input_ids=ids, pixel_values=px).tokens("text")
        got = head.logits(states.flatten(0, 1)).view_as(ref)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    folder = save_converted(ours, tmp_path / "vilt", heads)
    assert set(load_file(folder / HEADS_FILE)) == set(heads)
    assert isinstance(OneTowerModel.from_pretrained(folder), OneTowerModel)
    with pytest.raises(FileExistsError, match="never overwrite"):
        save_converted(ours, folder, heads)


def test_itm_head_imports_from_the_retrieval_model() -> None:
    vilt = randomise(ViltForImageAndTextRetrieval(vilt_config()))
    ours = convert_vilt_to_onetower(vilt).eval()
    head = ITMHead(48)
    head.load_state_dict({k.removeprefix("itm."): v for k, v in convert_vilt_heads(vilt).items()})
    ids = torch.randint(0, 300, (3, 6))
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        score = vilt(input_ids=ids, pixel_values=px).logits[:, 0]  # (B,)
        logits = head.classifier(ours(input_ids=ids, pixel_values=px).pooler_output)
    torch.testing.assert_close(logits.softmax(-1)[:, 1], score.sigmoid(), atol=ATOL, rtol=0)


def test_cli_writes_heads_and_never_overwrites(tmp_path, capsys) -> None:
    vilt = ViltForMaskedLM(vilt_config())
    vilt.save_pretrained(tmp_path / "src")
    main([str(tmp_path / "src"), str(tmp_path / "dst")])
    assert "with heads ['mlm']" in capsys.readouterr().out
    assert (tmp_path / "dst" / HEADS_FILE).is_file()
    before = (tmp_path / "dst" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="not empty"):
        main([str(tmp_path / "src"), str(tmp_path / "dst")])
    assert (tmp_path / "dst" / "model.safetensors").stat().st_mtime_ns == before


def test_cli_refuses_a_checkpoint_of_another_kind(tmp_path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(SystemExit, match="holds a 'bert' model, not ViLT"):
        main([str(tmp_path / "bert"), str(tmp_path / "dst")])
    assert not (tmp_path / "dst").exists()
