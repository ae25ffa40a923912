"""Image-text retrieval by the Karpathy protocol (COCO 5k / Flickr30K 1k test sets).

Images grouped with their captions (:class:`onetower.data.karpathy.RetrievalSplit`); R@1/5/10
both ways (a text's hit is its own image, an image's hit is any of its captions) from the
contrastive embeddings, optionally with each query's top k re-scored by the ITM head (ALBEF /
BLIP: k = 128 / 256 on COCO) in batches of pairs, so a 5k-image gallery never needs its
`(I, T)` score matrix, its pixels or its pair passes in memory at once. Chance figures are
reported beside the recalls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from onetower.data import keys
from onetower.data.karpathy import RetrievalSplit
from onetower.data.robust import SkipSample, decode_image
from onetower.objectives import ContrastiveHead, ITMHead, ObjectiveComposer
from onetower.objectives.contrastive import image_features, text_features
from onetower.retrieval_metrics import chance_recall, grouped_ranks, rerank
from onetower.training.config import ConfigError

#: How re-ranked candidates are scored: ITM's log P(match) plus the contrastive logit
#: (default; BLIP also adds the first-stage similarity), or ITM alone (ALBEF).
RERANK_SCORES = ("itm+contrastive", "itm")
KS = (1, 5, 10)


def _head(composer: ObjectiveComposer, cls: type, what: str) -> Any:
    head = next((h for h in composer.heads.values() if isinstance(h, cls)), None)
    if head is None:
        raise ConfigError(f"{what} needs a {cls.__name__}; this model has {sorted(composer.heads)}")
    return head


class SplitInputs:
    """Tokenised captions and decoded images of a split, on demand (a small LRU of images).

    Args:
        split: the images and captions.
        tokenizer: a callable HF tokenizer.
        transform: PIL image -> `(C, H, W)` tensor (the evaluation transform).
        max_len: caption length in tokens.
        cache_images: decoded images kept (re-ranking revisits a query's candidates).
    """

    def __init__(
        self,
        split: RetrievalSplit,
        tokenizer: Any,
        transform: Callable,
        max_len: int,
        cache_images: int = 1024,
    ) -> None:
        self.split, self.transform = split, transform
        enc = tokenizer(
            split.captions,
            padding="max_length",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"]  # (T, L)
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = cache_images

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """`(M, C, H, W)` pixels of images ``index`` (long `(M,)`)."""
        out = []
        for i in index.tolist():
            if i not in self._cache:
                path = self.split.image_paths[i]
                try:
                    image = decode_image(str(path))
                except SkipSample as e:  # a gallery with a hole would change the figures
                    raise FileNotFoundError(f"retrieval image {path}: {e}") from None
                self._cache[i] = self.transform(image)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(i)
            out.append(self._cache[i])
        return torch.stack(out)


@torch.no_grad()
def embed_split(
    composer: ObjectiveComposer, inputs: SplitInputs, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised contrastive embeddings ``(images (I, E), captions (T, E))`` on the CPU."""
    head = _head(composer, ContrastiveHead, "retrieval")
    device = composer.model.device
    images, texts = [], []
    n_img, n_txt = len(inputs.split.image_paths), len(inputs.split.captions)
    for s in range(0, n_img, batch_size):
        pixels = inputs.pixels(torch.arange(s, min(s + batch_size, n_img))).to(device)
        view = composer.views({keys.PIXEL_VALUES: pixels})["image"]
        images.append(F.normalize(head.image_proj(image_features(view)).float(), dim=-1).cpu())
    for s in range(0, n_txt, batch_size):
        batch = {
            keys.INPUT_IDS: inputs.ids[s : s + batch_size].to(device),
            keys.ATTENTION_MASK: inputs.mask[s : s + batch_size].to(device),
        }
        view = composer.views(batch)["text"]
        texts.append(F.normalize(head.text_proj(text_features(view)).float(), dim=-1).cpu())
    return torch.cat(images), torch.cat(texts)


def itm_pair_scorer(
    composer: ObjectiveComposer, inputs: SplitInputs
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score(images (M,), captions (M,)) -> (M,)``: ITM log P(match) of index pairs."""
    head = _head(composer, ITMHead, "ITM re-ranking")
    device = composer.model.device

    @torch.no_grad()
    def score(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        out = composer.model(
            input_ids=inputs.ids[txt].to(device),
            attention_mask=inputs.mask[txt].to(device),
            pixel_values=inputs.pixels(img).to(device),
        )
        return head.classifier(out.pooler_output).float().log_softmax(-1)[:, 1].cpu()

    return score


@torch.no_grad()
def evaluate_retrieval(
    composer: ObjectiveComposer,
    split: RetrievalSplit,
    tokenizer: Any,
    transform: Callable,
    max_len: int,
    rerank_k: int = 0,
    rerank_score: str = "itm+contrastive",
    batch_size: int = 64,
) -> dict[str, float]:
    """Karpathy-protocol retrieval of ``split``: ``i2t_r{1,5,10}``, ``t2i_r{1,5,10}``, ``rsum``,
    ``chance/...`` and, with ``rerank_k > 0``, the same under ``itm_rerank/``.

    The re-ranking score is ITM's log P(match) plus, with ``"itm+contrastive"`` (default), the
    contrastive logit (cosine x the head's learned scale): the two heads' log-likelihoods
    added. ``"itm"`` (ALBEF) uses ITM alone, which only helps when the ITM head was trained on
    hard negatives: a head trained on random in-batch negatives (FLAVA / ViLT layouts) accepts
    any near match and shuffles the top k.
    """
    if rerank_score not in RERANK_SCORES:
        raise ConfigError(f"itm_rerank_score must be one of {RERANK_SCORES}, got {rerank_score!r}")
    was = composer.training
    composer.eval()
    inputs = SplitInputs(split, tokenizer, transform, max_len)
    image, text = embed_split(composer, inputs, batch_size)
    cap = torch.tensor(split.caption_image)
    ranks = grouped_ranks(image, text, cap, k=rerank_k)
    out = ranks.recall(KS)
    n_img, n_txt = image.shape[0], text.shape[0]
    out |= {f"chance/i2t_r{k}": v for k, v in chance_recall(n_txt, n_txt / n_img, KS).items()}
    out |= {f"chance/t2i_r{k}": v for k, v in chance_recall(n_img, 1, KS).items()}
    out |= {"n_images": float(n_img), "n_captions": float(n_txt)}
    if rerank_k > 0:
        itm = itm_pair_scorer(composer, inputs)
        weight = 0.0
        if rerank_score == "itm+contrastive":
            weight = float(_head(composer, ContrastiveHead, "retrieval").scale().exp())
        i2t = rerank(ranks.i2t, lambda q, c: cap[c] == q, itm, weight, batch_size)
        t2i = rerank(
            ranks.t2i, lambda q, c: cap[q] == c, lambda q, c: itm(c, q), weight, batch_size
        )
        rr = type(ranks)(i2t, t2i).recall(KS)
        out |= {f"itm_rerank/{k}": v for k, v in rr.items()}
    composer.train(was)
    return out
