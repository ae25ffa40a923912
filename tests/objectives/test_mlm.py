"""MLM head against a per-token loop reference."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onetower.data import keys
from onetower.objectives import MASKED_PAIR, MLMHead


def naive_mlm(head: MLMHead, states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loop over every (sample, token); CE of the tied decoder; mean over selected."""
    total, count = 0.0, 0
    W, bias = head.embedding.weight, head.bias
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] == -100:
                continue
            h = head.transform(states[b, t])
            logits = torch.stack([h @ W[v] + bias[v] for v in range(W.shape[0])])
            total = total - F.log_softmax(logits, dim=0)[labels[b, t]]
            count += 1
    return total / count


def _run(model, batch, text_only: bool):
    head = MLMHead(model.get_input_embeddings())
    torch.nn.init.normal_(head.bias, std=0.1)
    kw = dict(input_ids=batch[keys.MLM_INPUT_IDS], attention_mask=batch[keys.ATTENTION_MASK])
    if not text_only:
        kw["pixel_values"] = batch[keys.PIXEL_VALUES]
    out = model(**kw)
    return head, out, head({MASKED_PAIR: out}, batch)


def test_mlm_matches_loop_paired_and_text_only(model_factory, batch_factory):
    model, batch = model_factory(), batch_factory()
    for text_only in (False, True):
        head, out, res = _run(model, batch, text_only)
        ref = naive_mlm(head, out.tokens("text"), batch[keys.MLM_LABELS])
        torch.testing.assert_close(res.loss, ref, atol=1e-5, rtol=1e-5)
        assert 0.0 <= float(res.metrics["acc"]) <= 1.0 and not res.metrics["acc"].requires_grad


def test_mlm_decoder_is_tied_to_the_token_embedding(model_factory):
    model = model_factory()
    head = MLMHead(model.get_input_embeddings())
    assert head.embedding.weight is model.text.word_embeddings.weight


def test_mlm_nothing_masked_is_zero_with_gradients(model_factory, batch_factory):
    model, batch = model_factory(), batch_factory()
    batch[keys.MLM_LABELS] = torch.full_like(batch[keys.MLM_LABELS], -100)
    head, _, res = _run(model, batch, text_only=False)
    assert res.loss.item() == 0.0 and math.isfinite(res.loss.item())
    res.loss.backward()
    for p in (head.transform.dense.weight, head.bias, model.encoder.blocks[0].attn.qkv.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert res.metrics["acc"].item() == 0.0
