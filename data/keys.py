"""The batch dict's keys: defined here once and used everywhere by name.

A batch is a ``dict[str, Tensor]``. Paired batches carry text and image keys; text-only
batches carry no image keys and image-only batches no text keys. Shapes: B batch, T text
length, C/H/W image, N patches in the full grid, Nk kept (visible) patches.
"""

from __future__ import annotations

#: long `(B, T)` token ids, first token is [CLS].
INPUT_IDS = "input_ids"
#: long `(B, T)` 1 = real token, 0 = padding.
ATTENTION_MASK = "attention_mask"
#: long `(B, T)` word index per token from the fast tokenizer's ``word_ids()`` (restarting
#: at 0 in every row), -1 for special tokens and padding: whole-word masking's word bounds,
#: whatever the tokenizer's sub-word scheme (WordPiece, byte-level BPE, SentencePiece).
WORD_IDS = "word_ids"
#: float `(B, C, H, W)` normalised pixels.
PIXEL_VALUES = "pixel_values"
#: long `(B, T)` text with MLM corruption applied ([MASK] / random / unchanged).
MLM_INPUT_IDS = "mlm_input_ids"
#: long `(B, T)` original id at MLM-selected positions, -100 elsewhere.
MLM_LABELS = "mlm_labels"
#: bool `(B, N)` patches selected for masked image modeling (True = masked).
MIM_MASK = "bool_masked_pos"
#: long `(B, Nk)` indices of the visible patches, for visible-only encoding (-1 = padding).
IMAGE_KEEP_IDS = "image_keep_ids"
#: long `(B, Tk)` positions of the text tokens to encode when masked tokens are dropped
#: (M3AE), ascending, -1 = padding; the [CLS] at position 0 is always kept.
TEXT_KEEP_IDS = "text_keep_ids"
#: long `(B,)` id of each sample's image, so duplicates are not treated as negatives.
IMAGE_IDS = "image_ids"

# Fine-tuning tasks
#: VQA: float `(B, A)` soft answer scores; NLVR2: long `(B,)` class (1 = true).
LABELS = "labels"
#: long `(B,)` VQA question ids (for the results file).
QUESTION_IDS = "question_ids"
#: long `(B,)` row index of each example in its split (NLVR2 predictions).
EXAMPLE_INDEX = "example_index"
