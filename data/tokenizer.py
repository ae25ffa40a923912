"""A small WordPiece tokenizer trained on the synthetic world, wrapped for transformers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

#: Special tokens in id order: [PAD] must be 0 so zero-filled buffers read as padding.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 32
) -> PreTrainedTokenizerFast:
    """Build a lowercase BERT-style WordPiece tokenizer from ``texts``.

    The vocabulary is every character (as a word start and as a ``##`` continuation, so any
    text can be encoded), then whole words by frequency (ties alphabetical) up to
    ``vocab_size``. ``tokenizers``' WordPieceTrainer is not used because its vocabulary
    changed from process to process on the same texts (hash-map order decides merge ties;
    measured with tokenizers 0.23.3), and the recipe needs the same ids on every rank/run.
    Normalisation and pre-tokenisation are tokenizers' BERT components.

    Args:
        texts: training strings.
        vocab_size: upper bound on the vocabulary, special tokens included.
        model_max_length: stored on the wrapper so ``truncation=True`` has a limit.

    Returns:
        A fast tokenizer with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4 that adds
        ``[CLS] ... [SEP]`` around each text.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab_list = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab_list += words[: max(vocab_size - len(vocab_list), 0)]
    if len(vocab_list) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} < {len(vocab_list)} specials + characters")
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return wrap_tokenizer(tok, model_max_length)


def wrap_tokenizer(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer``; special tokens must be named or their ids read None."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def load_tokenizer(
    path: str | Path, model_max_length: int | None = None
) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with ``save_pretrained`` (or a folder with ``tokenizer.json``).

    Never reaches the network: ``path`` must be a local folder.
    """
    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"no tokenizer.json or tokenizer_config.json in {path}")
    if (path / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
        tokenizer = wrap_tokenizer(Tokenizer.from_file(str(path / "tokenizer.json")), 512)
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: a fast tokenizer is needed (word ids, offsets)")
    return tokenizer


def word_token_ids(tokenizer: PreTrainedTokenizerBase, words: Iterable[str]) -> list[int]:
    """Ids of ``words``, each of which must be a single token (e.g. the colour words).

    Raises:
        ValueError: if a word splits into several tokens or is unknown.
    """
    ids = []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
            raise ValueError(f"{word!r} is not a single known token: {pieces}")
        ids.append(pieces[0])
    return ids


def grounding_word_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """The synthetic world's colour and shape words as token ids, per group, for the
    grounded-MLM probe; a group with a word that is not a single token is left out."""
    from onetower.data.world import COLOURS, SHAPES

    groups = {}
    for name, words in (("colour", COLOURS), ("shape", SHAPES)):
        try:
            groups[name] = word_token_ids(tokenizer, words)
        except ValueError:
            continue
    return groups
