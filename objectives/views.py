"""Views: the encoder passes a step needs, each computed at most once and only on demand.

- ``masked_pair``: MLM-masked text (``MLM_INPUT_IDS``) + the image, masked for MIM either by
  dropping patches (``image_keep_ids``) or by the mask token (``bool_masked_pos``);
  whichever streams the batch has.
- ``pair``: the B clean pairs followed by the ITM negative pairs, in one encoder call; or
  (``swap_negatives``, ViLT) the B pairs with the negatives' images swapped in place; or
  (``itm_masked_pass``, FLAVA) the ``masked_pair`` view itself, whose negative rows got
  another image, with no encoder call of its own (:meth:`StepViews.loss_batch` then drops
  those rows from the MLM / MIM labels). With
  unimodal towers, when the step needs the ``text`` and ``image`` views too (FLAVA), the
  pairs are fused from those views' tower states re-indexed, so the towers run once on the
  clean batch instead of again on every pair.
- ``text`` / ``image``: one modality alone; with a unimodal tower the pass stops after it
  (``fuse=False``, FLAVA), else the shared encoder runs on that modality alone. The image view
  may drop a random share of patches (FLIP) in training.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from onetower.data import keys
from onetower.data.masking import keep_ids_from_mask
from onetower.objectives.base import IGNORE_INDEX, VIEW_NAMES
from onetower.objectives.itm_negatives import NegativePairs
from onetower.outputs import EncoderOutput


@dataclass
class PairView:
    """The ``pair`` view.

    Attributes:
        encoder: output over `(B + K, L, D)`: the B positives, then the K negatives; with
            swapped negatives `(B, L, D)`, row ``negatives.text_index[k]`` holding negative k.
        itm_labels: long `(B + K,)` (swapped: `(B,)`), 1 = matched pair.
        negatives: indices into the batch of the K negative pairs.
    """

    encoder: EncoderOutput
    itm_labels: torch.Tensor
    negatives: NegativePairs


@dataclass
class ViewOptions:
    """How the views of a step are built (collected from the heads by the composer).

    Attributes:
        mim_masking: ``"drop"``, ``"mask_token"`` or None (image unmasked in ``masked_pair``).
        patch_dropout: FLIP patch-drop fraction for the ``image`` view in training.
        negatives: draws the ITM negatives: ``(batch, views, generator) -> NegativePairs``.
        sampler_views: views ``negatives`` reads.
        drop_text: encode only the kept text tokens (``TEXT_KEEP_IDS``, M3AE) in
            ``masked_pair`` instead of the [MASK]-corrupted text.
        swap_negatives: ITM negatives replace their positives in ``pair`` (see ``PairView``).
        itm_masked_pass: ITM negatives replace their positives' images in ``masked_pair``,
            which then is the ``pair`` view too (FLAVA).
    """

    mim_masking: str | None = None
    drop_text: bool = False
    patch_dropout: float = 0.0
    negatives: Callable[..., NegativePairs] | None = None
    sampler_views: tuple[str, ...] = field(default_factory=tuple)
    swap_negatives: bool = False
    itm_masked_pass: bool = False


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


class StepViews:
    """Lazy per-step cache of views over one batch (a ``Mapping``-like ``__getitem__``).

    Args:
        model: the shared encoder (``OneTowerModel``).
        batch: the step's batch dict.
        options: :class:`ViewOptions`.
        generator: randomness for patch dropout and ITM negatives.
        planned: the views this step's heads will ask for (lets ``pair`` reuse the towers of
            ``text`` and ``image``); None = unknown, nothing is reused.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: Mapping[str, Any],
        options: ViewOptions,
        generator: torch.Generator,
        planned: Collection[str] | None = None,
    ) -> None:
        self.model, self.batch, self.options, self.generator = model, batch, options, generator
        self.planned = frozenset(planned or ())
        self._cache: dict[str, Any] = {}
        #: (itm labels, negatives) drawn for the masked pass (``itm_masked_pass``), else None
        self._masked_itm: tuple[torch.Tensor, NegativePairs] | None = None
        self._loss_batch: Mapping[str, Any] = batch  # see loss_batch
        #: view names in the order they were computed (each appears once).
        self.computed: list[str] = []

    def __getitem__(self, name: str) -> Any:
        if name not in VIEW_NAMES:
            raise KeyError(f"unknown view {name!r}; views are {VIEW_NAMES}")
        if name not in self._cache:
            self._cache[name] = getattr(self, f"_{name}")()
            self.computed.append(name)
        return self._cache[name]

    def _text_args(self, ids_key: str = keys.INPUT_IDS) -> dict[str, Any]:
        b = self.batch
        if ids_key not in b:
            return {}
        return {"input_ids": b[ids_key], "attention_mask": b.get(keys.ATTENTION_MASK)}

    def _masked_pair(self) -> EncoderOutput:
        b, args = self.batch, {}
        if self.options.drop_text and keys.TEXT_KEEP_IDS in b:
            args.update(self._text_args(keys.INPUT_IDS), text_keep_ids=b[keys.TEXT_KEEP_IDS])
        else:
            text_key = keys.MLM_INPUT_IDS if keys.MLM_INPUT_IDS in b else keys.INPUT_IDS
            args.update(self._text_args(text_key))
        if keys.PIXEL_VALUES in b:
            args["pixel_values"] = b[keys.PIXEL_VALUES]
            if self.options.itm_masked_pass and keys.INPUT_IDS in b:
                args["pixel_values"] = b[keys.PIXEL_VALUES][self._draw_masked_negatives()]
            keep, mask = b.get(keys.IMAGE_KEEP_IDS), b.get(keys.MIM_MASK)
            # A batch without MIM keys (e.g. MLM-only data) keeps its image clean.
            if self.options.mim_masking == "drop" and (keep is not None or mask is not None):
                args["image_keep_ids"] = keep if keep is not None else keep_ids_from_mask(mask)
            elif self.options.mim_masking == "mask_token" and mask is not None:
                args["bool_masked_pos"] = mask.bool()
        return self.model(**args)

    def _text(self) -> EncoderOutput:
        return self.model(**self._text_args(), fuse=getattr(self.model, "text_tower", None) is None)

    def _image(self) -> EncoderOutput:
        pixels = self.batch[keys.PIXEL_VALUES]
        keep = None
        if self.options.patch_dropout > 0 and self.model.training:
            num_patches = self.model.image.num_patches
            keep = random_keep_ids(
                pixels.shape[0], num_patches, self.options.patch_dropout, self.generator,
                pixels.device,
            )  # fmt: skip
        fuse = getattr(self.model, "image_tower", None) is None
        return self.model(pixel_values=pixels, image_keep_ids=keep, fuse=fuse)

    def _draw_masked_negatives(self) -> torch.Tensor:
        """Draw this step's ITM negatives for the masked pass (ViLT's swap layout) and drop
        their rows from the batch the heads score; returns the image row of each of the B rows."""
        if self.options.negatives is None:
            raise RuntimeError("itm_masked_pass needs an ITM negative sampler")
        sampler_views = {name: self[name] for name in self.options.sampler_views}
        neg = self.options.negatives(self.batch, sampler_views, self.generator)
        image_rows, labels = swapped_rows(neg, self.batch[keys.INPUT_IDS].shape[0])
        self._masked_itm = (labels, neg)
        matched = labels.bool()[:, None]  # (B, 1)
        b = dict(self.batch)
        if keys.MLM_LABELS in b:
            b[keys.MLM_LABELS] = b[keys.MLM_LABELS].masked_fill(~matched, IGNORE_INDEX)
        if keys.MIM_MASK in b:
            b[keys.MIM_MASK] = b[keys.MIM_MASK].bool() & matched
        self._loss_batch = b
        return image_rows

    def loss_batch(self) -> Mapping[str, Any]:
        """The batch the heads score against: as given, except that after an ITM masked pass
        (FLAVA) the rows that got another image are dropped from the MLM labels and the MIM
        mask, so masked modeling is learned from matched pairs only (FLAVA's ``pos_mask``)."""
        return self._loss_batch

    def _pair(self) -> PairView:
        b = self.batch
        if self.options.negatives is None:
            raise RuntimeError("the pair view needs an ITM negative sampler")
        if self.options.itm_masked_pass:
            out = self["masked_pair"]
            if self._masked_itm is None:
                raise RuntimeError("itm_masked_pass: the masked_pair view had no image-text rows")
            labels, neg = self._masked_itm
            return PairView(encoder=out, itm_labels=labels, negatives=neg)
        sampler_views = {name: self[name] for name in self.options.sampler_views}
        neg = self.options.negatives(b, sampler_views, self.generator)
        ids, pixels = b[keys.INPUT_IDS], b[keys.PIXEL_VALUES]
        mask = b.get(keys.ATTENTION_MASK)
        rows = torch.arange(ids.shape[0], device=ids.device)
        if self.options.swap_negatives:  # ViLT: B sequences, negatives swapped in place
            text_rows = rows
            image_rows, labels = swapped_rows(neg, ids.shape[0])
        else:  # the B positives, then the K negatives
            text_rows = torch.cat([rows, neg.text_index])
            image_rows = torch.cat([rows, neg.image_index])
            labels = torch.cat([ids.new_ones(ids.shape[0]), ids.new_zeros(len(neg))])
        if self._reuse_towers():
            text, image = (
                self["text"].unimodal_states["text"],
                self["image"].unimodal_states["image"],
            )
            out = self.model.fuse_unimodal(
                text[text_rows], None if mask is None else mask[text_rows], image[image_rows]
            )
        else:
            out = self.model(
                input_ids=ids[text_rows],  # (B + K, T)
                attention_mask=None if mask is None else mask[text_rows],
                pixel_values=pixels[image_rows],  # (B + K, C, H, W)
            )
        return PairView(encoder=out, itm_labels=labels, negatives=neg)

    def _reuse_towers(self) -> bool:
        """Whether ``pair`` can fuse the ``text`` / ``image`` views' tower states: the model has
        both towers, the step needs both views anyway, and the image view is the full grid."""
        m = self.model
        return (
            getattr(m, "text_tower", None) is not None
            and getattr(m, "image_tower", None) is not None
            and {"text", "image"} <= self.planned
            and not (self.options.patch_dropout > 0 and m.training)
        )
