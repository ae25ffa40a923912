"""BEiT-3 import: a random tiny torchscale ``BEiT3`` and its onetower conversion give the same
token states (1e-5) for image-only, text-only and paired inputs, from the module's state dict
and from a unilm-style ``.pth`` through the CLI; bad checkpoints are errors that name the
problem and nothing is overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onetower import OneTowerModel
from onetower.convert_beit3 import convert_beit3_to_onetower, main, split_beit3_state

pytest.importorskip(
    "torchscale",
    reason="the BEiT-3 reference: .venv/bin/pip install --no-deps torchscale==0.3.0 "
    "fairscale==0.4.13 (README set-up)",
)

# torchscale imports timm.models.layers (deprecated in the timm this project uses)
pytestmark = pytest.mark.filterwarnings("ignore:Importing from timm.models.layers:FutureWarning")
TOL = 1e-5
WIDTH, HEADS, DEPTH, TEXT_LEN = 64, 4, 2, 16


def make_beit3(seed: int = 0, vocab_size: int = 120) -> torch.nn.Module:
    """A tiny torchscale BEiT3 as unilm configures it (Multiway, Sub-LN, no output layer),
    every parameter random (LayerNorms at 1 / 0 and zero tokens would hide a mapping error)."""
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    torch.manual_seed(seed)
    args = EncoderConfig(
        img_size=32,
        patch_size=8,
        vocab_size=vocab_size,
        multiway=True,
        layernorm_embedding=False,
        normalize_output=True,
        no_output_layer=True,
        encoder_embed_dim=WIDTH,
        encoder_attention_heads=HEADS,
        encoder_ffn_embed_dim=128,
        encoder_layers=DEPTH,
        max_source_positions=24,
    )
    assert args.subln and args.encoder_normalize_before and args.layernorm_eps == 1e-5
    model = BEiT3(args).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def beit3() -> torch.nn.Module:
    return make_beit3()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Three rows of text, two of them padded (XLM-R ids: bos 0, pad 1, eos 2), and images."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (3, 9), generator=g)
    ids[:, 0] = 0
    pad = torch.zeros_like(ids, dtype=torch.bool)
    pad[1, 6:] = True
    pad[2, 3:] = True
    ids[pad] = 1
    return {"ids": ids, "pad": pad, "pixels": torch.randn(3, 3, 32, 32, generator=g)}


def assert_parity(beit3: torch.nn.Module, model: OneTowerModel) -> None:
    """Per-stream states: BEiT-3's ``[vision ; text]`` against onetower's ``[text ; image]``,
    text compared at real (non-pad) tokens only."""
    b = batch()
    ids, pad, px = b["ids"], b["pad"], b["pixels"]
    real = ~pad
    with torch.no_grad():
        ref_image = beit3(visual_tokens=px)["encoder_out"]
        ref_text = beit3(textual_tokens=ids, text_padding_position=pad)["encoder_out"]
        ref_pair = beit3(textual_tokens=ids, visual_tokens=px, text_padding_position=pad)
        ours_image = model(pixel_values=px)
        ours_text = model(input_ids=ids, attention_mask=real.long())
        ours_pair = model(input_ids=ids, attention_mask=real.long(), pixel_values=px)
    n_vision = ref_pair["multiway_split_position"]
    assert n_vision == 17  # CLS + 4x4 patches
    ref_pair = ref_pair["encoder_out"]
    checks = {
        "image-only": (ours_image.tokens("image"), ref_image),
        "text-only": (ours_text.tokens("text")[real], ref_text[real]),
        "paired image": (ours_pair.tokens("image"), ref_pair[:, :n_vision]),
        "paired text": (ours_pair.tokens("text")[real], ref_pair[:, n_vision:][real]),
    }
    for name, (ours, ref) in checks.items():
        assert ours.shape == ref.shape, name
        err = (ours - ref).abs().max().item()
        assert err <= TOL, f"{name}: max abs error {err:.2e}"


def test_parity_from_the_module_state_dict(beit3) -> None:
    result = convert_beit3_to_onetower(beit3.state_dict(), num_heads=HEADS, max_text_len=TEXT_LEN)
    c = result.model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (WIDTH, DEPTH, HEADS)
    assert (c.image_size, c.patch_size, c.vocab_size, c.layer_norm_eps) == (32, 8, 120, 1e-5)
    assert c.multiway and c.multiway_attention and c.subln and not c.segment_embeddings
    assert result.dropped == [] and result.new == ["pooler.dense.bias", "pooler.dense.weight"]
    assert_parity(beit3, result.model)


def write_unilm_checkpoint(beit3: torch.nn.Module, path: Path) -> Path:
    """unilm's release layout: ``{"model": {"beit3.<key>": ...}}`` plus, in its pretraining
    checkpoints, a ``mim_head`` torchscale does not define."""
    state = {f"beit3.{k}": v for k, v in beit3.state_dict().items()}
    state["mim_head.weight"] = torch.randn(8, WIDTH)
    state["mim_head.bias"] = torch.randn(8)
    torch.save({"model": state}, path)
    return path


def test_cli_from_a_unilm_checkpoint_and_never_overwrites(beit3, tmp_path, capsys) -> None:
    src = write_unilm_checkpoint(beit3, tmp_path / "beit3.pth")
    dst = tmp_path / "out"
    main([str(src), str(dst), "--num-heads", str(HEADS), "--max-text-len", str(TEXT_LEN)])
    printed = capsys.readouterr().out
    assert "not imported: 2 tensors of ['mim_head']" in printed
    assert "new (random): ['pooler.dense.bias', 'pooler.dense.weight']" in printed
    assert_parity(beit3, OneTowerModel.from_pretrained(dst).eval())
    before = {p.name: p.stat().st_mtime_ns for p in dst.iterdir()}
    with pytest.raises(SystemExit, match="already exists.*nothing written"):
        main([str(src), str(dst), "--num-heads", str(HEADS), "--max-text-len", str(TEXT_LEN)])
    assert {p.name: p.stat().st_mtime_ns for p in dst.iterdir()} == before
    # torchscale's own keys in a safetensors file give the same weights
    save_file(beit3.state_dict(), str(tmp_path / "beit3.safetensors"))
    main(
        [
            str(tmp_path / "beit3.safetensors"),
            str(tmp_path / "st"),
            "--num-heads",
            str(HEADS),
            "--max-text-len",
            str(TEXT_LEN),
        ]
    )
    a, b = (
        load_file(str(dst / "model.safetensors")),
        load_file(str(tmp_path / "st" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_not_a_beit3_checkpoint(tmp_path) -> None:
    vilt_like = {"vilt.embeddings.text_embeddings.word_embeddings.weight": torch.zeros(4, 8)}
    with pytest.raises(ValueError, match=r"not a BEiT-3 checkpoint: no key 'beit3\.encoder"):
        split_beit3_state({"model": vilt_like})
    torch.save(vilt_like, tmp_path / "vilt.pth")
    with pytest.raises(SystemExit, match="not a BEiT-3 checkpoint.*nothing written"):
        main([str(tmp_path / "vilt.pth"), str(tmp_path / "out"), "--num-heads", "2"])
    assert not (tmp_path / "out").exists()


def test_missing_key_heads_and_mismatches_are_named(beit3) -> None:
    state = beit3.state_dict()
    for key in ("encoder.layers.1.self_attn.v_proj.B.bias", "encoder.layers.0.ffn.A.fc1.weight"):
        broken = {k: v for k, v in state.items() if k != key}
        with pytest.raises(KeyError, match=f"no '{key}'"):
            convert_beit3_to_onetower(broken, num_heads=HEADS, max_text_len=TEXT_LEN)
    no_layer = {k: v for k, v in state.items() if not k.startswith("encoder.layers.0.")}
    with pytest.raises(ValueError, match=r"no tensors for encoder layer\(s\) \[0\]"):
        convert_beit3_to_onetower(no_layer, num_heads=HEADS, max_text_len=TEXT_LEN)
    with pytest.raises(ValueError, match="num_heads 5 does not divide the BEiT-3 width 64"):
        convert_beit3_to_onetower(state, num_heads=5, max_text_len=TEXT_LEN)
    with pytest.raises(ValueError, match="width 64 needs num_heads"):
        convert_beit3_to_onetower(state, max_text_len=TEXT_LEN)
    with pytest.raises(ValueError, match=r"decides hidden_size=64 \(asked for 32\)"):
        convert_beit3_to_onetower(state, num_heads=HEADS, max_text_len=TEXT_LEN, hidden_size=32)
    with pytest.raises(ValueError, match="max_text_len 30 > the checkpoint's 22 text positions"):
        convert_beit3_to_onetower(state, num_heads=HEADS, max_text_len=30)
    # one layer's FFN narrower than the others: the tensor and both shapes are named
    narrow = dict(state)
    narrow["encoder.layers.1.ffn.B.fc1.weight"] = torch.zeros(96, WIDTH)
    with pytest.raises(ValueError, match=r"encoder\.blocks\.1\.mlp\.0\.fc1\.weight has shape"):
        convert_beit3_to_onetower(narrow, num_heads=HEADS, max_text_len=TEXT_LEN)
    unknown = {**state, "encoder.relative_position.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="does not know.*relative_position"):
        convert_beit3_to_onetower(unknown, num_heads=HEADS, max_text_len=TEXT_LEN)
