"""Whole-word masking follows the tokenizer's own word boundaries for byte-level BPE,
SentencePiece-style (Metaspace) and WordPiece tokenizers, each trained here on a tiny corpus
with a vocabulary small enough that most words split into several pieces."""

from __future__ import annotations

import pytest
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from onetower.data import PatchMasking, TextCollator, TextMasking, keys
from onetower.data.batch_masking import BatchMasker, step_generator
from onetower.data.tokenizer import SPECIAL_TOKENS, wrap_tokenizer

CORPUS = [
    "everywhere the zebras quickly jumped over purple triangles",
    "a small red circle left of a large blue square",
    "unbelievably colourful diamonds shimmered underneath everything",
    "the green hexagon is nowhere near the yellow rectangle",
    "somewhere a tiny square rotated counterclockwise",
    "red",
]
MAX_LENGTH = 48  # room for the longest text: 46 tokens in WordPiece's character pieces
# Two different words select alike in all draws with probability 2**-32 at p = 0.5.
DRAWS = 32


def _byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _metaspace_unigram() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=60, special_tokens=list(SPECIAL_TOKENS), unk_token="[UNK]", show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _wordpiece() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=60, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(
    scope="module",
    params=[_byte_level_bpe, _metaspace_unigram, _wordpiece],
    ids=["byte_level_bpe", "metaspace_unigram", "wordpiece"],
)
def sub_tokenizer(request):
    tok = request.param()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    return wrap_tokenizer(tok, MAX_LENGTH)


def _reference_words(tokenizer, texts):
    """long `(B, T)` word ids straight from the tokenizer (-1 for None), and the special /
    padding positions `(B, T)` as the tokenizer marks them."""
    enc = tokenizer(
        texts,
        padding="max_length",
        max_length=MAX_LENGTH,
        truncation=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    words = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))]
    special = enc["special_tokens_mask"].bool() | ~enc["attention_mask"].bool()
    return torch.tensor(words), special


def _collate(tokenizer, texts):
    collate = TextCollator(tokenizer, MAX_LENGTH, pad_to_max_length=True)
    return collate([{"text": t} for t in texts])


def test_collated_word_ids_are_the_tokenizers(sub_tokenizer) -> None:
    batch = _collate(sub_tokenizer, CORPUS)
    words, special = _reference_words(sub_tokenizer, CORPUS)
    assert batch[keys.WORD_IDS].dtype == torch.long
    assert torch.equal(batch[keys.WORD_IDS], words)
    assert torch.equal(batch[keys.WORD_IDS] == -1, special)  # -1 exactly on special / padding
    pieces = sub_tokenizer.convert_ids_to_tokens(batch[keys.INPUT_IDS][0])
    first_word = [p for p, w in zip(pieces, words[0].tolist(), strict=True) if w == 0]
    assert len(first_word) > 1, first_word  # "everywhere" is several pieces


def test_whole_words_are_masked_atomically(sub_tokenizer) -> None:
    """All tokens of a word are selected together, tokens of different words are not tied
    to each other (the groups are the tokenizer's words, no coarser), a multi-token word is
    selected in the first draw, and special / padding tokens never are."""
    batch = _collate(sub_tokenizer, CORPUS)
    words, special = _reference_words(sub_tokenizer, CORPUS)
    masker = BatchMasker(sub_tokenizer, TextMasking(probability=0.5, whole_word=True))
    draws = torch.stack(
        [masker(batch, step_generator(0, s))[keys.MLM_LABELS] != -100 for s in range(DRAWS)]
    )  # (DRAWS, B, T)
    assert not (draws & special).any()
    multi_selected = 0
    for row in range(len(CORPUS)):
        row_words = words[row]
        signatures = {}
        for w in row_words[row_words >= 0].unique().tolist():
            sel = draws[:, row, row_words == w]  # (DRAWS, tokens of word w)
            assert (sel == sel[:, :1]).all(), (row, w)  # all tokens or none, in every draw
            signatures[w] = tuple(sel[:, 0].tolist())
            multi_selected += int(sel.shape[1] > 1 and bool(sel[0, 0]))
        assert len(set(signatures.values())) == len(signatures), row  # words draw apart
    assert multi_selected > 0


def test_world_size_2_slices_equal_the_global_draw(sub_tokenizer) -> None:
    masker = BatchMasker(
        sub_tokenizer, TextMasking(probability=0.4, whole_word=True), PatchMasking((4, 4), 0.5)
    )
    full = _collate(sub_tokenizer, CORPUS)
    full[keys.PIXEL_VALUES] = torch.zeros(len(CORPUS), 3, 32, 32)
    whole = masker(full, step_generator(0, 3))
    assert (whole[keys.MLM_LABELS] != -100).any()
    half = len(CORPUS) // 2
    for rank in range(2):
        part = {k: v[rank * half : (rank + 1) * half] for k, v in full.items()}
        mine = masker(part, step_generator(0, 3), rank=rank, world_size=2)
        for key in (keys.MLM_INPUT_IDS, keys.MLM_LABELS, keys.MIM_MASK, keys.IMAGE_KEEP_IDS):
            assert torch.equal(mine[key], whole[key][rank * half : (rank + 1) * half]), key
