"""Import BEiT-3 weights (microsoft/unilm ``beit3`` checkpoints, torchscale's ``BEiT3``).

Reads a state dict, so torchscale is not needed: unilm's released ``.pth`` files
(``{"model": {"beit3.…": …, <task head>…}}``) or a torchscale ``BEiT3`` module's own
``state_dict()`` (the same keys without ``beit3.``). The converted config sets what BEiT-3 is:

* ``multiway`` + ``multiway_attention``: per-modality LayerNorms, q/k/v/out projections and
  FFNs, one softmax over the joint sequence; torchscale's ``A`` (vision) copies become
  ``IMAGE_EXPERT``, ``B`` (text) ``TEXT_EXPERT``; q / k / v are fused into ``qkv``;
* ``subln``: the Sub-LN before the attention output projection (``inner_attn_ln``) and before
  ``fc2`` (``ffn_layernorm``);
* positions: two learned tables whose ids start at 2 (fairseq): rows 0-1 are dropped, the
  vision table becomes ``image.pos_embed`` (CLS + patches), the text table's first
  ``max_text_len`` used rows ``text.position_embeddings``;
* no segment embedding, no embedding LayerNorm, no embedding scale; LayerNorm eps 1e-5
  (torchscale's ``EncoderConfig`` default, which unilm keeps).

BEiT-3 orders the sequence ``[vision ; text]``, onetower ``[text ; image]``; with no relative
position bias attention is order-free, so every token's state is the same, reordered.
Not imported (named in the result): ``mim_head.*`` (torchscale has no MIM head) and task
heads; onetower's ``pooler`` has no BEiT-3 counterpart and starts random (seed 0).

Usage: ``python -m onetower.convert_beit3 beit3_base_patch16_224.pth DST_DIR
[--tokenizer beit3.spm]`` (never overwrites ``DST_DIR``; the tokenizer is saved into it, so
``init=DST_DIR`` / ``data.tokenizer=DST_DIR`` find it).
"""

from __future__ import annotations

import argparse
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from onetower.configuration import OneTowerConfig
from onetower.convert_io import need_key, pop_key, refuse_existing, save_converted
from onetower.layers import IMAGE_EXPERT, TEXT_EXPERT
from onetower.modeling import OneTowerModel

#: BEiT-3's published widths and their head counts (base, large)
HEADS_BY_WIDTH = {768: 12, 1024: 16}
#: torchscale's Multiway copies -> onetower's experts
EXPERTS = {"A": IMAGE_EXPERT, "B": TEXT_EXPERT}
#: key every BEiT-3 state dict has (checked first, so other checkpoints get a clear error)
SIGNATURE = "encoder.embed_positions.A.weight"
#: the fields the checkpoint's tensors decide; an override that disagrees is an error
FROM_CHECKPOINT = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "image_size",
    "patch_size",
    "num_channels",
)
#: per layer: torchscale module -> onetower module (``{w}`` = A / B, ``{e}`` = the expert index)
_LAYER = {
    "self_attn_layer_norm.{w}": "norm1.{e}",
    "self_attn.inner_attn_ln.{w}": "attn.norm.{e}",
    "self_attn.out_proj.{w}": "attn.proj.{e}",
    "final_layer_norm.{w}": "norm2.{e}",
    "ffn.{w}.fc1": "mlp.{e}.fc1",
    "ffn.{w}.ffn_layernorm": "mlp.{e}.norm",
    "ffn.{w}.fc2": "mlp.{e}.fc2",
}
_ENCODER_PREFIXES = ("text_embed.", "vision_embed.", "encoder.")


@dataclass
class BEiT3Import:
    """The result of :func:`convert_beit3_to_onetower`.

    Attributes:
        model: the converted encoder.
        dropped: sorted checkpoint keys not imported (``mim_head.*``, task heads).
        new: sorted onetower parameters with no BEiT-3 counterpart (random, seed 0).
    """

    model: OneTowerModel
    dropped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)


def split_beit3_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder tensors of a BEiT-3 checkpoint (keys as torchscale's ``BEiT3`` names them)
    and the sorted keys of everything else (``mim_head.*``, task heads).

    Accepts ``{"model": {...}}`` / ``{"module": {...}}`` (unilm's files) or a flat state dict,
    with or without the ``beit3.`` prefix.

    Raises:
        ValueError: not a BEiT-3 checkpoint (names the key it lacks).
    """
    if not isinstance(state, dict):
        raise ValueError(f"not a BEiT-3 checkpoint: a {type(state).__name__}, not a state dict")
    for wrapper in ("model", "module"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    prefixed = any(k.startswith("beit3.") for k in state)
    encoder: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        name = key.removeprefix("beit3.") if prefixed else key
        inside = key.startswith("beit3.") if prefixed else key.startswith(_ENCODER_PREFIXES)
        if inside and name != "encoder.output_projection.weight":  # an LM head, not the encoder
            encoder[name] = value
        else:
            dropped.append(key)
    if SIGNATURE not in encoder:
        raise ValueError(
            f"not a BEiT-3 checkpoint: no key {'beit3.' + SIGNATURE!r} (or {SIGNATURE!r}); "
            f"it has {len(state)} keys, e.g. {sorted(state)[:3]}"
        )
    return encoder, sorted(dropped)


def _depth(sd: dict[str, torch.Tensor]) -> int:
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")}
    depth = max(layers) + 1 if layers else 0
    gaps = sorted(set(range(depth)) - layers)
    if gaps:
        raise ValueError(f"BEiT-3 checkpoint has no tensors for encoder layer(s) {gaps}")
    return depth


def _need(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return need_key(sd, key, "BEiT-3")


def beit3_config(
    sd: dict[str, torch.Tensor],
    num_heads: int | None = None,
    max_text_len: int = 64,
    layer_norm_eps: float = 1e-5,
    pad_token_id: int = 1,
    **overrides: Any,
) -> OneTowerConfig:
    """The :class:`OneTowerConfig` of a BEiT-3 encoder state dict (from :func:`split_beit3_state`).

    Args:
        sd: torchscale ``BEiT3`` keys.
        num_heads: attention heads; required unless the width is 768 (12) or 1024 (16): a state
            dict does not record it.
        max_text_len: text positions kept (BEiT-3's ``num_max_bpe_tokens`` is 64).
        layer_norm_eps: epsilon of every LayerNorm (torchscale's default 1e-5).
        pad_token_id: the tokenizer's pad id (XLM-R's ``<pad>`` is 1).
        overrides: other :class:`OneTowerConfig` fields (dropout, drop_path_rate, ...).

    Raises:
        ValueError: the heads do not divide the width, too many text positions, an override
            that contradicts the checkpoint, or a checkpoint of inconsistent shape.
    """
    vocab, width = _need(sd, "text_embed.weight").shape
    proj = _need(sd, "vision_embed.proj.weight")  # (D, C, p, p)
    patch, channels = proj.shape[-1], proj.shape[1]
    rows = _need(sd, SIGNATURE).shape[0]  # 2 unused (fairseq) + CLS + patches
    grid = math.isqrt(max(rows - 3, 0))
    if grid * grid != rows - 3 or proj.shape[0] != width:
        raise ValueError(
            f"BEiT-3 vision position table has {rows} rows and the patch projection shape "
            f"{tuple(proj.shape)}: not 3 + a square patch grid of width {width}"
        )
    text_rows = _need(sd, "encoder.embed_positions.B.weight").shape[0] - 2
    if max_text_len > text_rows:
        raise ValueError(
            f"max_text_len {max_text_len} > the checkpoint's {text_rows} text positions "
            "(--max-text-len)"
        )
    if num_heads is None:
        if width not in HEADS_BY_WIDTH:
            raise ValueError(
                f"a BEiT-3 of width {width} needs num_heads (--num-heads): only widths "
                f"{sorted(HEADS_BY_WIDTH)} have a known head count"
            )
        num_heads = HEADS_BY_WIDTH[width]
    if width % num_heads:
        raise ValueError(f"num_heads {num_heads} does not divide the BEiT-3 width {width}")
    found = dict(
        hidden_size=width,
        num_hidden_layers=_depth(sd),
        intermediate_size=_need(sd, "encoder.layers.0.ffn.A.fc1.weight").shape[0],
        vocab_size=vocab,
        image_size=grid * patch,
        patch_size=patch,
        num_channels=channels,
    )
    clash = {
        k: (overrides[k], found[k])
        for k in FROM_CHECKPOINT
        if overrides.get(k, found[k]) != found[k]
    }
    if clash:
        raise ValueError(
            "the BEiT-3 checkpoint decides "
            + ", ".join(f"{k}={v[1]} (asked for {v[0]})" for k, v in clash.items())
        )
    fields = dict(
        **found,
        num_attention_heads=num_heads,
        layer_norm_eps=layer_norm_eps,
        multiway=True,
        multiway_attention=True,
        subln=True,
        segment_embeddings=False,
        text_embed_norm=False,
        text_position="learned",
        max_text_len=max_text_len,
        pad_token_id=pad_token_id,
        image_cls_token=True,
        image_position="learned",
        image_position_resample="bicubic",  # unilm interpolates its table bicubically
        use_mask_token="vision_embed.mask_token" in sd,
    )
    return OneTowerConfig(**{**fields, **overrides})


def convert_beit3_state_dict(
    sd: dict[str, torch.Tensor], config: OneTowerConfig
) -> dict[str, torch.Tensor]:
    """Rename a BEiT-3 encoder state dict (torchscale keys) to onetower's.

    Raises:
        KeyError: a tensor the mapping expects is missing (named).
        ValueError: tensors left over that the mapping does not know (named).
    """
    sd = dict(sd)

    def take(key: str) -> torch.Tensor:
        return pop_key(sd, key, "BEiT-3")

    T = config.max_text_len
    out: dict[str, torch.Tensor] = {
        "text.word_embeddings.weight": take("text_embed.weight"),
        "text.position_embeddings": take("encoder.embed_positions.B.weight")[2 : 2 + T],
        "image.pos_embed": take(SIGNATURE)[None, 2:],  # (1, 1 + N, D)
        "image.cls_token": take("vision_embed.cls_token"),
        "image.patch_embed.proj.weight": take("vision_embed.proj.weight"),
        "image.patch_embed.proj.bias": take("vision_embed.proj.bias"),
    }
    if config.use_mask_token:
        out["image.mask_token"] = take("vision_embed.mask_token")
    for way, e in EXPERTS.items():
        for kind in ("weight", "bias"):
            for i in range(config.num_hidden_layers):
                s, d = f"encoder.layers.{i}.", f"encoder.blocks.{i}."
                for src, dst in _LAYER.items():
                    out[f"{d}{dst.format(e=e)}.{kind}"] = take(f"{s}{src.format(w=way)}.{kind}")
                qkv = [take(f"{s}self_attn.{n}_proj.{way}.{kind}") for n in "qkv"]
                out[f"{d}attn.qkv.{e}.{kind}"] = torch.cat(qkv, dim=0)
            out[f"encoder.norm.{e}.{kind}"] = take(f"encoder.layer_norm.{way}.{kind}")
    if sd:
        raise ValueError(
            f"BEiT-3 checkpoint has tensors this importer does not know: {sorted(sd)[:8]}"
            + (" ..." if len(sd) > 8 else "")
            + " (a variant onetower cannot express, e.g. relative position bias)"
        )
    return out


def convert_beit3_to_onetower(
    state: dict[str, Any], num_heads: int | None = None, max_text_len: int = 64, **overrides: Any
) -> BEiT3Import:
    """Convert a BEiT-3 checkpoint (see :func:`split_beit3_state` for the accepted forms).

    Args:
        state: the loaded checkpoint.
        num_heads, max_text_len, overrides: see :func:`beit3_config`.

    Returns:
        :class:`BEiT3Import`: the model (in eval mode, the checkpoint's dtype) and what was
        dropped / is new.
    """
    sd, dropped = split_beit3_state(state)
    config = beit3_config(sd, num_heads, max_text_len, **overrides)
    converted = convert_beit3_state_dict(sd, config)
    with torch.random.fork_rng(devices=[]):  # the new pooler: the same for the same checkpoint
        torch.manual_seed(0)
        model = OneTowerModel(config).eval()
    expected = model.state_dict()
    for key, value in converted.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(
                f"BEiT-3 tensor for {key} has shape {tuple(value.shape)}, a width-"
                f"{config.hidden_size} / depth-{config.num_hidden_layers} model needs "
                f"{tuple(expected[key].shape)}: the checkpoint's tensors disagree"
            )
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"BEiT-3 conversion left missing={missing} unexpected={unexpected}")
    dtype = converted["text.word_embeddings.weight"].dtype
    return BEiT3Import(model.to(dtype), dropped, sorted(missing))


def load_beit3_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """Load a ``.pth`` (tensors only unless ``trust_pickle``) or ``.safetensors`` checkpoint
    on the CPU."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} holds Python objects besides tensors ({str(e).splitlines()[0]}); "
            "pass --trust-pickle if you trust the file"
        ) from None


def load_beit3_tokenizer(spm: str | Path, max_text_len: int = 64) -> Any:
    """BEiT-3's tokenizer: ``XLMRobertaTokenizer`` over its SentencePiece model (``beit3.spm``),
    as a fast tokenizer (word ids for whole-word masking); ids as fairseq / XLM-R number them
    (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, SentencePiece piece ``i`` at ``i + 1``,
    ``<mask>`` last).

    transformers 5 converts a SentencePiece file only when it is named ``*.model`` (given
    ``vocab_file="beit3.spm"`` it silently builds a 5-token vocabulary), so the file is read
    from a temporary folder under XLM-R's own file name. Needs the ``beit3`` extra
    (``sentencepiece`` and ``protobuf`` read the ``.spm``).
    """
    import shutil
    import tempfile

    from transformers import XLMRobertaTokenizer

    path = Path(spm)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {spm} does not exist (BEiT-3's beit3.spm)")
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(path, Path(folder) / XLMRobertaTokenizer.vocab_files_names["vocab_file"])
        tokenizer = XLMRobertaTokenizer.from_pretrained(folder, local_files_only=True)
    if len(tokenizer) <= 5:
        raise ValueError(
            f"{spm} gave a {len(tokenizer)}-token vocabulary: not a SentencePiece model"
        )
    tokenizer.model_max_length = max_text_len
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    """CLI: convert a BEiT-3 ``.pth`` checkpoint into a onetower checkpoint folder."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "src", help="BEiT-3 checkpoint: unilm's .pth, or a BEiT3 state dict (.pth / .safetensors)"
    )
    p.add_argument("dst", help="output folder for the onetower checkpoint (must not exist)")
    p.add_argument("--num-heads", type=int, help="attention heads (needed unless width 768/1024)")
    p.add_argument("--max-text-len", type=int, default=64, help="text positions kept (64)")
    p.add_argument("--layer-norm-eps", type=float, default=1e-5, help="LayerNorm eps (1e-5)")
    p.add_argument("--tokenizer", help="BEiT-3's beit3.spm, saved into the output folder")
    p.add_argument("--trust-pickle", action="store_true", help="load a .pth with Python objects")
    args = p.parse_args(argv)
    try:
        refuse_existing(args.dst)
        tokenizer = (
            load_beit3_tokenizer(args.tokenizer, args.max_text_len) if args.tokenizer else None
        )
        state = load_beit3_checkpoint(args.src, args.trust_pickle)
        extra = {"pad_token_id": tokenizer.pad_token_id} if tokenizer is not None else {}
        result = convert_beit3_to_onetower(
            state,
            args.num_heads,
            args.max_text_len,
            layer_norm_eps=args.layer_norm_eps,
            **extra,
        )
        if tokenizer is not None and len(tokenizer) > result.model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens, the checkpoint's vocabulary "
                f"{result.model.config.vocab_size}: not this model's tokenizer"
            )
    except (ValueError, KeyError, FileExistsError, FileNotFoundError) as e:
        raise SystemExit(
            f"error: {e.args[0] if isinstance(e, KeyError) else e}; nothing written"
        ) from None
    save_converted(result.model, args.dst)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.dst)
    c = result.model.config
    print(
        f"wrote {args.dst}: BEiT-3 width {c.hidden_size}, depth {c.num_hidden_layers}, "
        f"{c.num_attention_heads} heads, {c.image_size} px, {c.max_text_len} text positions"
        + (", with its tokenizer" if tokenizer is not None else "")
    )
    if result.dropped:
        heads = sorted({k.split(".")[0] for k in result.dropped})
        print(f"not imported: {len(result.dropped)} tensors of {heads} (no onetower counterpart)")
    if result.new:
        print(f"new (random): {result.new}")


if __name__ == "__main__":
    main()
