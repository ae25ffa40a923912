"""BEiT-3's SentencePiece tokenizer (``XLMRobertaTokenizer`` over ``beit3.spm``): ids as
fairseq numbers them, word ids for whole-word masking, carried by the converted folder, and
``beit3_like`` pretraining runs with it and whole-word masking on. The ``.spm`` is trained
here on a tiny corpus, small enough that most words split into several pieces."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import pytest
import torch

from onetower.convert_beit3 import load_beit3_tokenizer, main
from onetower.data import TextCollator, TextMasking, keys, load_tokenizer
from onetower.data.batch_masking import BatchMasker, step_generator
from onetower.data.world import COLOURS, SHAPES, SIZES
from onetower.pretraining import pretrain

from ..conftest import debug_config

spm = pytest.importorskip("sentencepiece", reason="the beit3 extra: pip install 'onetower[beit3]'")

TEXTS = ["a small red circle", "two large blue triangles above everything", "nothing"]


# torchscale imports timm.models.layers (deprecated in the timm this project uses)
pytestmark = pytest.mark.filterwarnings("ignore:Importing from timm.models.layers:FutureWarning")


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory) -> Path:
    corpus = [
        f"a {size} {colour} {shape} left of the {shape}s"
        for size, colour, shape in itertools.product(SIZES, COLOURS, SHAPES)
    ] + TEXTS
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=40,
        model_type="unigram",
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm") / "beit3.spm"
    path.write_bytes(model.getvalue())
    return path


def test_ids_are_fairseq_xlmr(spm_file) -> None:
    tok = load_beit3_tokenizer(spm_file, max_text_len=24)
    assert tok.is_fast and len(tok) == 40 + 2  # 4 specials + 37 pieces + <mask>
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.mask_token_id == len(tok) - 1
    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    for text in TEXTS:
        assert tok(text)["input_ids"] == [0] + [i + 1 for i in sp.encode(text)] + [2]


def test_words_are_masked_whole(spm_file) -> None:
    tok = load_beit3_tokenizer(spm_file, max_text_len=24)
    batch = TextCollator(tok, 24, pad_to_max_length=True)([{"text": t} for t in TEXTS])
    words = batch[keys.WORD_IDS]
    assert (words[batch[keys.INPUT_IDS] == tok.pad_token_id] == -1).all()
    pieces_per_word = torch.bincount(words[0][words[0] >= 0])
    assert (pieces_per_word > 1).any(), tok.convert_ids_to_tokens(batch[keys.INPUT_IDS][0])
    masker = BatchMasker(tok, TextMasking(probability=0.5, whole_word=True))
    draws = torch.stack(
        [masker(batch, step_generator(0, s))[keys.MLM_LABELS] != -100 for s in range(16)]
    )  # (draws, B, T)
    assert draws.any()
    for row in range(len(TEXTS)):
        for w in words[row][words[row] >= 0].unique():
            sel = draws[:, row, words[row] == w]
            assert (sel == sel[:, :1]).all(), (row, int(w))  # all pieces of a word, or none
        assert not draws[:, row, words[row] == -1].any()


def test_converted_folder_carries_the_tokenizer_and_pretraining_runs(
    spm_file, tmp_path, worlds
) -> None:
    pytest.importorskip(
        "torchscale",
        reason="the BEiT-3 reference: .venv/bin/pip install --no-deps torchscale==0.3.0 "
        "fairscale==0.4.13 (README set-up)",
    )
    from .test_convert_beit3 import make_beit3

    beit3 = make_beit3(vocab_size=42)
    src = tmp_path / "beit3.pth"
    torch.save({"model": {f"beit3.{k}": v for k, v in beit3.state_dict().items()}}, src)
    dst = tmp_path / "converted"
    main(
        [
            str(src),
            str(dst),
            "--num-heads",
            "4",
            "--max-text-len",
            "16",
            "--tokenizer",
            str(spm_file),
        ]
    )
    tok = load_tokenizer(dst)
    assert tok.is_fast and len(tok) == 42 and tok("red")["input_ids"][0] == 0
    cfg = debug_config(
        "beit3_like",
        tmp_path,
        f"model.init={dst}",
        "model.init_heads=none",
        *(f"model.{k}=null" for k in ("size", "multiway", "use_mask_token")),
        f"data.tokenizer={dst}",
        "objectives.mlm.whole_word=true",
        "train.max_steps=2",
        "train.log_every=1",
        world=worlds(8),
    )
    run = pretrain(cfg)
    assert len(run.history["mlm_loss"]) >= 1
    assert all(math.isfinite(v) for _, v in run.history["loss"])
