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


def build_tokenizer_from_texts(
    texts: Iterable[str], vocab_size: int = 30522, model_max_length: int = 40
) -> PreTrainedTokenizerFast:
    """A lowercase BERT-style WordPiece tokenizer (real sub-words: ``tokenizers``'
    ``WordPieceTrainer``) from the user's own text, with [PAD]=0 ... [MASK]=4 as
    :func:`train_wordpiece_tokenizer`. Build it once and save it (the trainer's ties may
    differ between processes, so never build it per rank)."""
    from tokenizers import trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = tok.get_vocab()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return wrap_tokenizer(tok, model_max_length)


def iter_texts(specs: Iterable[str], text_column: str = "text") -> Iterable[str]:
    """Captions / texts from ``.txt`` (one per line), JSONL / Parquet / CSV (``text_column``),
    or tar shards (their captions) -- the formats ``data.pairs`` and ``data.texts`` read."""
    import json

    import pyarrow.parquet as pq

    from onetower.data.webdataset import expand_shards, is_shard_spec, read_shard

    for spec in specs:
        if is_shard_spec(spec):
            for shard in expand_shards(spec):
                for row in read_shard(shard):
                    text = row["text"]
                    if isinstance(text, bytes):
                        text = text.decode("utf-8", "replace")
                    if text:
                        yield text
            continue
        path = Path(spec)
        if path.is_dir():  # an imagefolder: its metadata
            path = next(
                (
                    path / n
                    for n in ("metadata.jsonl", "metadata.parquet", "metadata.csv")
                    if (path / n).is_file()
                ),
                path,
            )
        if path.suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.strip():
                        yield str(json.loads(line).get(text_column, ""))
        elif path.suffix == ".parquet":
            yield from (
                str(t) for t in pq.read_table(path, columns=[text_column])[text_column].to_pylist()
            )
        elif path.suffix == ".csv":
            import csv

            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                yield from (row[text_column] for row in csv.DictReader(f))
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from (line.rstrip("\n") for line in f if line.strip())


def main(argv: list[str] | None = None) -> None:
    """``python -m onetower.data.tokenizer OUT --texts FILE... [--vocab-size N]``: build a
    WordPiece tokenizer from your own text and save it to OUT (give it as ``data.tokenizer``)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m onetower.data.tokenizer",
        description="Build a lowercase WordPiece tokenizer from your own text; use the folder "
        "as data.tokenizer.",
    )
    parser.add_argument("out", help="folder to write (tokenizer.json + tokenizer_config.json)")
    parser.add_argument(
        "--texts",
        nargs="+",
        required=True,
        help=".txt (a text per line), .jsonl / .parquet / .csv (--text-column), an imagefolder, "
        "or tar shards (their captions; brace lists and globs as data.pairs takes them)",
    )
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--max-len", type=int, default=40, help="model_max_length stored")
    args = parser.parse_args(argv)
    n = 0

    def counted() -> Iterable[str]:
        nonlocal n
        for t in iter_texts(args.texts, args.text_column):
            n += 1
            yield t

    tok = build_tokenizer_from_texts(counted(), args.vocab_size, args.max_len)
    if n == 0:
        raise SystemExit(f"no text found in {args.texts}")
    tok.save_pretrained(args.out)
    print(f"wrote {args.out}: {len(tok)} tokens from {n} texts; use data.tokenizer={args.out}")


if __name__ == "__main__":
    main()
