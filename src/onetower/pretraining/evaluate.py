"""Held-out evaluation of a pretraining run on image-text pairs.

- held-out losses of every head (masks drawn from a fixed generator, so numbers are comparable
  across evaluations);
- zero-shot retrieval R@1/5/10 both ways with the contrastive embeddings (a hit is a retrieved
  caption identical to the true one, so duplicate captions do not count as misses);
- zero-shot classification over each ``eval.probe_words`` group (CLIP style, every
  ``train.eval_every`` steps with the rest, logged to the tracker): the held-out images whose caption names
  exactly one word of the group are labelled with it, each word is embedded through prompt
  templates (averaged), and an image takes its nearest word; accuracy beside chance;
- the grounding probe (``eval.probe_words``): per word group, every token of the group in the
  caption is masked and predicted by the MLM head, once with the image and once with the
  image blanked (all-zero pixels): the gap is what the model learned to read from the image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from onetower.data import PairCollator, keys
from onetower.data.batch_masking import step_generator
from onetower.objectives import ContrastiveHead, MLMHead, ObjectiveComposer
from onetower.objectives.contrastive import text_features
from onetower.retrieval_metrics import recall_at_k

EVAL_SEED = 1234


def eval_batches(
    dataset: Any, tokenizer: Any, max_len: int, max_samples: int, batch_size: int
) -> Iterator[tuple[dict[str, torch.Tensor], list[str]]]:
    """Clean (unmasked) batches of the first ``max_samples`` held-out pairs, plus captions."""
    collate = PairCollator(tokenizer, max_len, pad_to_max_length=True)
    samples = [
        s for s in (dataset[i] for i in range(min(max_samples, len(dataset)))) if s is not None
    ]
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        yield collate(chunk), [s["text"] for s in chunk]


#: prompt templates of the zero-shot classification during training (averaged per word)
ZERO_SHOT_TEMPLATES = ("{}", "a {}", "a small {}", "a large {}")


@dataclass
class ZeroShotProbe:
    """Zero-shot classification during training: class words per group (``eval.probe_words``)
    and how to embed their prompts."""

    groups: dict[str, list[str]]
    tokenizer: Any
    max_len: int
    templates: tuple[str, ...] = ZERO_SHOT_TEMPLATES


def caption_label(caption: str, words: list[str]) -> str | None:
    """The one word of ``words`` a caption names (plurals count), or None (none or several)."""
    named = {w for w in words for t in caption.lower().split() if t.rstrip("s") == w or t == w}
    return named.pop() if len(named) == 1 else None


@torch.no_grad()
def zero_shot_accuracy(
    head: ContrastiveHead,
    composer: ObjectiveComposer,
    image_emb: torch.Tensor,
    captions: list[str],
    probe: ZeroShotProbe,
    device: torch.device,
) -> dict[str, float]:
    """``eval/zero_shot_<group>_acc`` and ``..._chance`` (%) from the held-out image
    embeddings `(N, E)` and their captions."""
    out = {}
    for group, words in probe.groups.items():
        labels = [caption_label(c, list(words)) for c in captions]
        rows = [i for i, y in enumerate(labels) if y is not None]
        if not rows:
            continue
        prompts = [t.format(w) for w in words for t in probe.templates]
        enc = probe.tokenizer(
            prompts, padding=True, truncation=True, max_length=probe.max_len, return_tensors="pt"
        )
        batch = {
            keys.INPUT_IDS: enc["input_ids"].to(device),
            keys.ATTENTION_MASK: enc["attention_mask"].to(device),
        }
        view = composer.views(batch)["text"]
        txt = F.normalize(head.text_proj(text_features(view)).float(), dim=-1)  # (W*P, E)
        classes = F.normalize(txt.view(len(words), len(probe.templates), -1).mean(1), dim=-1)
        pred = (image_emb[rows].float() @ classes.t()).argmax(1).cpu()  # (M,)
        truth = torch.tensor([list(words).index(labels[i]) for i in rows])
        out[f"eval/zero_shot_{group}_acc"] = 100.0 * float((pred == truth).float().mean())
        out[f"eval/zero_shot_{group}_chance"] = 100.0 / len(words)
        out[f"eval/zero_shot_{group}_n"] = float(len(rows))
    return out


@torch.no_grad()
def evaluate(
    composer: ObjectiveComposer,
    mask: Callable[[dict, torch.Generator], dict],
    batches: Iterator[tuple[dict[str, torch.Tensor], list[str]]],
    probe: dict[str, list[int]],
    mask_token_id: int,
    device: torch.device,
    zero_shot: ZeroShotProbe | None = None,
) -> dict[str, float]:
    """Run every evaluation above; returns ``eval/...`` scalars.

    Args:
        composer: the heads and the encoder.
        mask: adds the step's masks to a clean batch with a given generator.
        batches: clean held-out batches with their captions (:func:`eval_batches`).
        probe: word group -> token ids for the grounding probe ({} = off).
        mask_token_id: the tokenizer's [MASK].
        device: where the model is.
        zero_shot: zero-shot classification over word groups (needs the contrastive head).
    """
    was_training = composer.training
    composer.eval()
    sums: dict[str, float] = defaultdict(float)
    n_batches = 0
    text_emb, image_emb, captions = [], [], []
    counts = {(g, name): [0, 0] for g in probe for name in ("with_image", "blank_image")}
    contrastive = head_of(composer, ContrastiveHead)
    mlm = head_of(composer, MLMHead)
    for i, (batch, texts) in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        gen = step_generator(EVAL_SEED + 1, i)
        out = composer(mask(batch, step_generator(EVAL_SEED, i)), generator=gen)
        for k, v in out.logs().items():
            sums[k] += float(v)
        n_batches += 1
        if contrastive is not None:
            views = composer.views(
                batch, gen, [n for n, h in composer.heads.items() if h is contrastive]
            )
            img, txt = contrastive.embed(views["text"], views["image"])
            image_emb.append(img)
            text_emb.append(txt)
            captions += texts
        if mlm is not None:
            for (group, name), count in counts.items():
                pixels = batch[keys.PIXEL_VALUES] if name == "with_image" else None
                hits, total = word_accuracy(
                    composer, mlm, batch, probe[group], mask_token_id, pixels
                )
                count[0] += hits
                count[1] += total
    metrics = {f"eval/{k}": v / max(n_batches, 1) for k, v in sums.items() if k.endswith("loss")}
    if image_emb:
        image, text = torch.cat(image_emb), torch.cat(text_emb)
        sim = image @ text.t()  # (N, N)
        recall = recall_at_k(sim, sim.t(), captions, ks=(1, 5, 10))
        metrics |= {f"eval/{k}": v for k, v in recall.items()}
        metrics["eval/retrieval_chance"] = 100.0 / len(captions)
        if zero_shot is not None:
            metrics |= zero_shot_accuracy(contrastive, composer, image, captions, zero_shot, device)
    for (group, name), (hits, total) in counts.items():
        if total:
            metrics[f"eval/{group}_mlm_acc_{name}"] = 100.0 * hits / total
    composer.train(was_training)
    return metrics


def head_of(composer: ObjectiveComposer, cls: type) -> Any:
    """The composer's head of class ``cls``, or None."""
    return next((h for h in composer.heads.values() if isinstance(h, cls)), None)


def word_accuracy(
    composer: ObjectiveComposer,
    mlm: MLMHead,
    batch: dict[str, torch.Tensor],
    word_ids: list[int],
    mask_token_id: int,
    pixels: torch.Tensor | None,
) -> tuple[int, int]:
    """Mask every token in ``word_ids``, predict it with ``pixels`` (None = a blank image)."""
    ids = batch[keys.INPUT_IDS]
    is_word = torch.isin(ids, torch.tensor(word_ids, device=ids.device))
    if not is_word.any():
        return 0, 0
    masked = ids.masked_fill(is_word, mask_token_id)
    if pixels is None:
        pixels = torch.zeros_like(batch[keys.PIXEL_VALUES])
    out = composer.model(
        input_ids=masked, attention_mask=batch[keys.ATTENTION_MASK], pixel_values=pixels
    )
    states = out.tokens("text")[is_word]  # (M, D)
    pred = mlm.logits(states).argmax(-1)
    return int((pred == ids[is_word]).sum()), int(is_word.sum())
