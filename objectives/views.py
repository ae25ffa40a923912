"""Views: the encoder passes a step runs, declared by the heads as specs.

A head lists the views it reads as spec objects (:attr:`Objective.views`). A spec names its
kind (the key the head reads the output under) and says how the pass is built; ``encode``
runs it. The composer merges the specs of every enabled head into one per kind at build time
(:func:`~onetower.objectives.view_plan.plan_views`): a field one head leaves open (``None``)
takes the other's value, and two different values are a build error that names both heads.
A new kind of pass (a captioning head's seq2seq view, say) is a new spec class in the head's
own file: neither the composer nor the engine changes.

The four kinds here:

- :class:`MaskedPairView` (``masked_pair``): text masked for MLM (tokens replaced, or dropped
  before the encoder as in M3AE) with the image masked for MIM (patches dropped, MAE / M3AE,
  or replaced by the mask token, BEiT / FLAVA); whichever streams the batch has. The masks
  themselves are drawn per step by the pretraining task from these settings.
- :class:`PairView` (``pair``): clean pairs plus ITM negatives from a sampler, laid out after
  the B positives (``append``), in their place (``swap``, ViLT) or on the masked pass itself
  (``masked_pass``, FLAVA: no pass of its own; MLM / MIM then score the matched rows only).
- :class:`TextView` / :class:`ImageView`: one modality alone (tower states when the model has
  that tower), the image with optional FLIP patch dropout in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from onetower.data import PatchMasking, TextMasking, keys
from onetower.data.masking import keep_ids_from_mask
from onetower.objectives.base import IGNORE_INDEX
from onetower.objectives.itm_negatives import NegativePairs, RandomNegatives
from onetower.outputs import EncoderOutput
from onetower.sequence import ATTENTION_PATTERNS

MASKED_PAIR, PAIR, TEXT, IMAGE = "masked_pair", "pair", "text", "image"


@runtime_checkable
class ViewSpec(Protocol):
    """How one encoder pass of a step is built. Specs are frozen dataclasses: equal specs are
    the same pass, and ``None`` fields mean "any" when specs of one kind are merged."""

    #: The key heads read the pass under; one merged spec per kind runs per step.
    kind: ClassVar[str]

    def requires(self) -> tuple[ViewSpec, ...]:
        """Other views this one reads (planned with it)."""
        ...

    def check(self, plan: dict[str, ViewSpec]) -> str | None:
        """A problem with the merged plan (named in the build error), or None."""
        ...

    def encode(self, step: Any) -> Any:
        """Run the pass over ``step.batch`` (``step`` is the step's ``StepViews``)."""
        ...


@runtime_checkable
class NegativeSampler(Protocol):
    """Draws the ITM negative pairs of a step (no gradient flows through the choice)."""

    #: Views the sampler reads (e.g. text and image features for hard negatives).
    views: tuple[ViewSpec, ...]

    def __call__(
        self, batch: dict[str, Any], views: dict[str, Any], generator: torch.Generator
    ) -> NegativePairs: ...


@dataclass
class PairOutput:
    """The ``pair`` view.

    Attributes:
        encoder: output over `(B + K, L, D)`: the B positives, then the K negatives; in the
            swap and masked-pass layouts `(B, L, D)`, row ``negatives.text_index[k]`` holding
            negative k.
        itm_labels: long `(B + K,)` (swap / masked pass: `(B,)`), 1 = matched pair.
        negatives: indices into the batch of the K negative pairs.
    """

    encoder: EncoderOutput
    itm_labels: torch.Tensor
    negatives: NegativePairs


def swapped_rows(neg: NegativePairs, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ViLT's swap layout: each negative replaces its positive in place.

    Returns:
        the image row of each of the B rows (long `(B,)`: its own, or the negative's other
        image) and the ITM labels (long `(B,)`, 0 at the negatives).
    """
    rows = torch.arange(batch_size, device=neg.text_index.device)
    image_rows = rows.index_put((neg.text_index,), neg.image_index)
    labels = torch.ones_like(rows).index_put((neg.text_index,), rows.new_zeros(()))
    return image_rows, labels


def random_keep_ids(
    batch_size: int,
    num_patches: int,
    drop: float,
    generator: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """FLIP / open_clip ``PatchDropout``: keep ``int(N * (1 - drop))`` random patches per sample.

    Returns:
        long `(B, Nk)` sorted grid indices.
    """
    keep = max(1, int(num_patches * (1 - drop)))
    noise = torch.rand(batch_size, num_patches, generator=generator)  # (B, N)
    ids = noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, Nk)
    return ids.to(device)


def _text_args(batch: dict[str, Any], ids_key: str = keys.INPUT_IDS) -> dict[str, Any]:
    if ids_key not in batch:
        return {}
    return {"input_ids": batch[ids_key], "attention_mask": batch.get(keys.ATTENTION_MASK)}


@dataclass(frozen=True)
class TextView:
    """Clean text alone; with a unimodal text tower the pass stops after it (FLAVA)."""

    kind: ClassVar[str] = TEXT
    attention: str | None = None  #: None = bidirectional

    def requires(self) -> tuple[ViewSpec, ...]:
        return ()

    def check(self, plan: dict[str, ViewSpec]) -> str | None:
        return _attention_problem(self.attention)

    def encode(self, step: Any) -> EncoderOutput:
        model = step.model
        return model(
            **_text_args(step.batch),
            fuse=model.text_tower is None,
            attention=self.attention or "bidirectional",
        )


@dataclass(frozen=True)
class ImageView:
    """Clean image alone (tower states with an image tower); FLIP patch dropout in training."""

    kind: ClassVar[str] = IMAGE
    patch_dropout: float | None = None  #: fraction of patches dropped in training; None = 0

    def requires(self) -> tuple[ViewSpec, ...]:
        return ()

    def check(self, plan: dict[str, ViewSpec]) -> str | None:
        if self.patch_dropout is not None and not 0.0 <= self.patch_dropout < 1.0:
            return f"patch_dropout must be in [0, 1), got {self.patch_dropout}"
        return None

    def drops_patches(self, training: bool) -> bool:
        return bool(self.patch_dropout) and training

    def encode(self, step: Any) -> EncoderOutput:
        model, pixels = step.model, step.batch[keys.PIXEL_VALUES]
        keep = None
        if self.drops_patches(model.training):
            keep = random_keep_ids(
                pixels.shape[0],
                model.image.num_patches,
                self.patch_dropout,
                step.generator,
                pixels.device,
            )
        return model(pixel_values=pixels, image_keep_ids=keep, fuse=model.image_tower is None)


TEXT_MODES, IMAGE_MODES = ("replace", "drop"), ("mask_token", "drop")


@dataclass(frozen=True)
class MaskedPairView:
    """Masked text and / or masked image in one pass.

    Attributes:
        text_mode: ``"replace"`` (BERT: [MASK] / random / kept tokens are encoded) or
            ``"drop"`` (M3AE: the selected tokens never reach the encoder); None = clean text.
        text_masking: how tokens are selected (probability, whole words).
        image_mode: ``"mask_token"`` (BEiT / FLAVA) or ``"drop"`` (MAE / M3AE); None = clean.
        image_masking: how patches are selected (ratio, blocks).
        attention: the encoder's attention pattern; None = bidirectional.
    """

    kind: ClassVar[str] = MASKED_PAIR
    text_mode: str | None = None
    text_masking: TextMasking | None = None
    image_mode: str | None = None
    image_masking: PatchMasking | None = None
    attention: str | None = None

    def requires(self) -> tuple[ViewSpec, ...]:
        return ()

    def check(self, plan: dict[str, ViewSpec]) -> str | None:
        if self.text_mode not in (None, *TEXT_MODES):
            return f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}"
        if self.image_mode not in (None, *IMAGE_MODES):
            return f"image_mode must be one of {IMAGE_MODES}, got {self.image_mode!r}"
        if (self.text_mode is None) != (self.text_masking is None):
            return "text_mode and text_masking go together"
        if (self.image_mode is None) != (self.image_masking is None):
            return "image_mode and image_masking go together"
        return _attention_problem(self.attention)

    def encode(self, step: Any) -> EncoderOutput:
        b, args = step.batch, {}
        if self.text_mode == "drop" and keys.TEXT_KEEP_IDS in b:
            args.update(_text_args(b), text_keep_ids=b[keys.TEXT_KEEP_IDS])
        else:
            args.update(
                _text_args(b, keys.MLM_INPUT_IDS if keys.MLM_INPUT_IDS in b else keys.INPUT_IDS)
            )
        if keys.PIXEL_VALUES in b:
            args["pixel_values"] = b[keys.PIXEL_VALUES]
            pair = step.plan.get(PAIR)
            if isinstance(pair, PairView) and pair.layout == "masked_pass" and keys.INPUT_IDS in b:
                args["pixel_values"] = b[keys.PIXEL_VALUES][pair.draw_on_masked_pass(step)]
            keep, mask = b.get(keys.IMAGE_KEEP_IDS), b.get(keys.MIM_MASK)
            # A batch without MIM keys (e.g. MLM-only data) keeps its image clean.
            if self.image_mode == "drop" and (keep is not None or mask is not None):
                args["image_keep_ids"] = keep if keep is not None else keep_ids_from_mask(mask)
            elif self.image_mode == "mask_token" and mask is not None:
                args["bool_masked_pos"] = mask.bool()
        return step.model(**args, attention=self.attention or "bidirectional")


PAIR_LAYOUTS = ("append", "swap", "masked_pass")


@dataclass(frozen=True)
class PairView:
    """Clean pairs and ITM negatives.

    Attributes:
        negatives: the sampler; None = any (a head that reads pairs but draws no negatives
            itself, e.g. word-patch alignment): then ViLT's ITM sampling is used, half the
            rows swapped to another image, unless another head names a sampler.
        layout: ``"append"`` (B positives then K negatives), ``"swap"`` (ViLT: B rows, the
            negatives in place) or ``"masked_pass"`` (FLAVA: the rows of the ``masked_pair``
            view, negatives in place; no pass of its own); None = any (``swap`` by default).
    """

    kind: ClassVar[str] = PAIR
    negatives: NegativeSampler | None = None
    layout: str | None = None

    def requires(self) -> tuple[ViewSpec, ...]:
        views = tuple(self.negatives.views) if self.negatives is not None else ()
        return views + ((MaskedPairView(),) if self.layout == "masked_pass" else ())

    def check(self, plan: dict[str, ViewSpec]) -> str | None:
        if self.layout not in (None, *PAIR_LAYOUTS):
            return f"layout must be one of {PAIR_LAYOUTS}, got {self.layout!r}"
        masked = plan.get(MASKED_PAIR)
        if self.layout == "masked_pass" and isinstance(masked, MaskedPairView):
            if "drop" in (masked.text_mode, masked.image_mode):
                # dropped tokens leave no per-row mask to restrict MLM / MIM to the positives
                return (
                    "the masked_pass layout needs mask-token MIM and [MASK]ed text, not "
                    "dropped patches or tokens"
                )
        return None

    def _draw(self, step: Any) -> NegativePairs:
        sampler = self.negatives or default_sampler()
        views = {spec.kind: step[spec.kind] for spec in sampler.views}
        return sampler(step.batch, views, step.generator)

    def draw_on_masked_pass(self, step: Any) -> torch.Tensor:
        """Draw the negatives for the masked pass, keep them for :meth:`encode`, and drop their
        rows from the batch the heads score (FLAVA's ``pos_mask``); returns each row's image."""
        neg = self._draw(step)
        image_rows, labels = swapped_rows(neg, step.batch[keys.INPUT_IDS].shape[0])
        step.masked_pass_itm = (labels, neg)
        matched = labels.bool()[:, None]  # (B, 1)
        b = dict(step.batch)
        if keys.MLM_LABELS in b:
            b[keys.MLM_LABELS] = b[keys.MLM_LABELS].masked_fill(~matched, IGNORE_INDEX)
        if keys.MIM_MASK in b:
            b[keys.MIM_MASK] = b[keys.MIM_MASK].bool() & matched
        step.loss_batch = b
        return image_rows

    def encode(self, step: Any) -> PairOutput:
        if self.layout == "masked_pass":
            out = step[MASKED_PAIR]
            if step.masked_pass_itm is None:
                raise RuntimeError("masked_pass: the masked_pair view had no image-text rows")
            labels, neg = step.masked_pass_itm
            return PairOutput(encoder=out, itm_labels=labels, negatives=neg)
        b, model = step.batch, step.model
        neg = self._draw(step)
        ids, pixels, mask = b[keys.INPUT_IDS], b[keys.PIXEL_VALUES], b.get(keys.ATTENTION_MASK)
        rows = torch.arange(ids.shape[0], device=ids.device)
        if self.layout == "append":  # the B positives, then the K negatives
            text_rows = torch.cat([rows, neg.text_index])
            image_rows = torch.cat([rows, neg.image_index])
            labels = torch.cat([ids.new_ones(ids.shape[0]), ids.new_zeros(len(neg))])
        else:  # ViLT: B sequences, negatives swapped in place
            text_rows = rows
            image_rows, labels = swapped_rows(neg, ids.shape[0])
        masks = None if mask is None else mask[text_rows]
        if _reuse_towers(step):
            text = step[TEXT].unimodal_states["text"]
            image = step[IMAGE].unimodal_states["image"]
            out = model.fuse_unimodal(text[text_rows], masks, image[image_rows])
        else:  # (B + K, T) and (B + K, C, H, W), or B of each
            out = model(
                input_ids=ids[text_rows], attention_mask=masks, pixel_values=pixels[image_rows]
            )
        return PairOutput(encoder=out, itm_labels=labels, negatives=neg)


def _reuse_towers(step: Any) -> bool:
    """Whether ``pair`` can fuse the ``text`` / ``image`` views' tower states: the model has
    both towers, the step runs both views anyway, and the image view is the full grid."""
    m, image = step.model, step.plan.get(IMAGE)
    return (
        m.text_tower is not None
        and m.image_tower is not None
        and {TEXT, IMAGE} <= step.planned
        and not m.config.tower_fusion_prenorm  # fusion reads pre-norm states: run forward
        and not (isinstance(image, ImageView) and image.drops_patches(m.training))
    )


def _attention_problem(pattern: str | None) -> str | None:
    if pattern is None or pattern in ATTENTION_PATTERNS:
        return None
    return f"attention must be one of {ATTENTION_PATTERNS}, got {pattern!r}"


def default_sampler() -> NegativeSampler:
    """ViLT's ITM sampling (half the rows get another image), for pair views no head pins."""
    return RandomNegatives(0.5)
