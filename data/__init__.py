"""Datasets, transforms, collators, masking and the synthetic world (knows no model)."""

from onetower.data import keys
from onetower.data.collators import ImageCollator, PairCollator, TextCollator
from onetower.data.masking import (
    MaskedTokens,
    PatchMask,
    PatchMasking,
    TextMasking,
    block_mask,
    keep_ids_from_mask,
    mask_tokens,
    random_patch_mask,
    sample_mask_ratios,
)
from onetower.data.nlvr2 import read_nlvr2
from onetower.data.pipeline import (
    CachedDataset,
    MapDataset,
    SampleDecoder,
    StreamDataset,
    build_dataset,
)
from onetower.data.robust import BadDataError, SkipCounter, SkipSample, clean_text, decode_image
from onetower.data.sources import Source, interleave, load_images, load_pairs, load_texts
from onetower.data.synthetic import (
    SyntheticWorld,
    WorldSpec,
    ensure_synthetic_world,
    write_synthetic_world,
)
from onetower.data.tokenizer import (
    grounding_word_ids,
    load_tokenizer,
    train_wordpiece_tokenizer,
    word_token_ids,
)
from onetower.data.transforms import RESIZE_MODES, build_image_transform, to_square
from onetower.data.vqa import answer_vocab, read_vqa, soft_targets, vqa_score
from onetower.data.webdataset import (
    ShardStream,
    expand_shards,
    load_webdataset,
    write_webdataset_shards,
)
from onetower.data.world import COLOURS, SHAPES

__all__ = [
    "RESIZE_MODES",
    "ShardStream",
    "expand_shards",
    "to_square",
    "COLOURS",
    "SHAPES",
    "BadDataError",
    "ImageCollator",
    "CachedDataset",
    "MapDataset",
    "MaskedTokens",
    "PairCollator",
    "PatchMask",
    "PatchMasking",
    "SampleDecoder",
    "SkipCounter",
    "SkipSample",
    "Source",
    "StreamDataset",
    "SyntheticWorld",
    "TextCollator",
    "TextMasking",
    "WorldSpec",
    "answer_vocab",
    "block_mask",
    "build_dataset",
    "build_image_transform",
    "clean_text",
    "grounding_word_ids",
    "decode_image",
    "ensure_synthetic_world",
    "interleave",
    "keep_ids_from_mask",
    "keys",
    "load_images",
    "load_pairs",
    "load_texts",
    "load_tokenizer",
    "load_webdataset",
    "mask_tokens",
    "random_patch_mask",
    "read_nlvr2",
    "read_vqa",
    "sample_mask_ratios",
    "soft_targets",
    "train_wordpiece_tokenizer",
    "vqa_score",
    "word_token_ids",
    "write_synthetic_world",
    "write_webdataset_shards",
]
