"""Held-out evaluation of a pretraining run on image-text pairs.

- held-out losses of every head (masks drawn from a fixed generator, so numbers are comparable
  across evaluations);
- zero-shot retrieval R@1 both ways with the contrastive embeddings (a hit is a retrieved
  caption identical to the true one, so duplicate captions do not count as misses);
- grounded MLM accuracy, per word group (the synthetic world's colour words, its shape
  words): every word of the group in the caption is masked and predicted, once with the image
  and once with the image blanked (all-zero pixels): the gap is what the model learned to read
  from the image.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from onetower.data import keys
from onetower.data.batch_masking import BatchMasker, step_generator
from onetower.data.collators import PairCollator
from onetower.objectives import ObjectiveComposer, StepViews, ViewOptions

EVAL_SEED = 1234


def eval_batches(dataset: Any, tokenizer: Any, max_len: int, max_samples: int, batch_size: int):
    """Clean (unmasked) batches of the first ``max_samples`` held-out pairs, plus captions."""
    collate = PairCollator(tokenizer, max_len, pad_to_max_length=True)
    samples = [
        s for s in (dataset[i] for i in range(min(max_samples, len(dataset)))) if s is not None
    ]
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        yield collate(chunk), [s["text"] for s in chunk]


@torch.no_grad()
def evaluate(
    composer: ObjectiveComposer,
    masker: BatchMasker,
    dataset: Any,
    tokenizer: Any,
    max_len: int,
    max_samples: int,
    batch_size: int,
    word_ids: dict[str, list[int]],
    device: torch.device,
) -> dict[str, float]:
    """Run every evaluation above; returns ``eval/...`` scalars."""
    was_training = composer.training
    composer.eval()
    sums: dict[str, float] = defaultdict(float)
    n_batches = 0
    text_emb, image_emb, captions = [], [], []
    counts = {(g, name): [0, 0] for g in word_ids for name in ("with_image", "blank_image")}
    head = composer.heads
    for i, (batch, texts) in enumerate(
        eval_batches(dataset, tokenizer, max_len, max_samples, batch_size)
    ):
        batch = {k: v.to(device) for k, v in batch.items()}
        gen = step_generator(EVAL_SEED + 1, i)
        out = composer(masker(batch, step_generator(EVAL_SEED, i)), generator=gen)
        for k, v in out.logs().items():
            sums[k] += float(v)
        n_batches += 1
        if "contrastive" in head:
            views = StepViews(composer.model, batch, ViewOptions(), composer.generator)
            img, txt = head["contrastive"].embed(views["text"], views["image"])
            image_emb.append(img)
            text_emb.append(txt)
            captions += texts
        if "mlm" in head:
            for (group, name), count in counts.items():
                pixels = batch[keys.PIXEL_VALUES] if name == "with_image" else None
                hits, total = word_accuracy(
                    composer, batch, word_ids[group], tokenizer.mask_token_id, pixels
                )
                count[0] += hits
                count[1] += total
    metrics = {f"eval/{k}": v / max(n_batches, 1) for k, v in sums.items() if k.endswith("loss")}
    if image_emb:
        metrics.update(retrieval_r1(torch.cat(image_emb), torch.cat(text_emb), captions))
    for (group, name), (hits, total) in counts.items():
        if total:
            metrics[f"eval/{group}_mlm_acc_{name}"] = hits / total
    composer.train(was_training)
    return metrics


def word_accuracy(
    composer: ObjectiveComposer,
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
    pred = composer.heads["mlm"].logits(states).argmax(-1)
    return int((pred == ids[is_word]).sum()), int(is_word.sum())


def retrieval_r1(image: torch.Tensor, text: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """R@1 both ways over N held-out pairs; chance is about 1/N."""
    sim = image @ text.t()  # (N, N)
    n = len(captions)
    i2t = sum(captions[j] == captions[i] for i, j in enumerate(sim.argmax(1).tolist())) / n
    t2i = sum(captions[j] == captions[i] for i, j in enumerate(sim.argmax(0).tolist())) / n
    return {"eval/i2t_r1": i2t, "eval/t2i_r1": t2i, "eval/retrieval_chance": 1 / n}
