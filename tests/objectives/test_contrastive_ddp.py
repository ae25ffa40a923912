"""Two gloo processes with the differentiable gather equal one process on the whole batch.

Convention (see ``onetower.objectives.contrastive``): each rank's loss is the mean over its
local rows; the mean of the rank losses is the single-process loss, and DDP-style averaging
of the parameter gradients gives the single-process gradients.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from onetower.objectives import ContrastiveHead
from onetower.outputs import EncoderOutput

B, D, E, WORLD = 3, 16, 8, 2


def _data() -> tuple[torch.Tensor, torch.Tensor, ContrastiveHead]:
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(WORLD * B, D, generator=g), torch.randn(WORLD * B, D, generator=g)
    torch.manual_seed(0)
    head = ContrastiveHead(D, E)
    with torch.no_grad():
        head.logit_scale.fill_(1.5)
    return text, image, head


def _view(states: torch.Tensor, name: str) -> EncoderOutput:
    """A one-token encoder output whose CLS state is ``states`` `(B, D)`."""
    n = states.shape[0]
    return EncoderOutput(
        last_hidden_state=states[:, None],  # (B, 1, D)
        pooler_output=states,
        attention_mask=None,
        segment_ids=torch.zeros(n, 1, dtype=torch.long),
        modality_slices={name: slice(0, 1)},
        cls_positions={name: 0},
    )


def _run(text: torch.Tensor, image: torch.Tensor, head: ContrastiveHead):
    text, image = text.clone().requires_grad_(), image.clone().requires_grad_()
    out = head({"text": _view(text, "text"), "image": _view(image, "image")}, {})
    out.loss.backward()
    return out, text.grad, image.grad


def _worker(rank: int, port: int, path: str) -> None:
    # A forked child must not enter the OpenMP pool the parent already started (libgomp is not
    # fork-safe and would hang); one intra-op thread keeps every op inline.
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        assert dist.get_world_size() == WORLD
        text, image, head = _data()
        rows = slice(rank * B, (rank + 1) * B)
        out, g_text, g_image = _run(text[rows], image[rows], head)
        loss = out.loss.detach().clone()
        dist.all_reduce(loss)
        grads = [p.grad.clone() for p in head.parameters()]
        for gr in grads:  # what DDP does: average over ranks
            dist.all_reduce(gr)
            gr /= WORLD
        torch.save(
            dict(
                loss=loss / WORLD, grads=grads, g_text=g_text, g_image=g_image, metrics=out.metrics
            ),
            f"{path}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gather_equals_single_process(tmp_path):
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:  # fail loudly instead of hanging the suite
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("the 2-process contrastive run did not finish in 120 s")
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    text, image, head = _data()
    ref, ref_text, ref_image = _run(text, image, head)
    for r in res:
        torch.testing.assert_close(r["loss"], ref.loss.detach(), atol=1e-5, rtol=1e-5)
        for got, p in zip(r["grads"], head.parameters(), strict=True):
            torch.testing.assert_close(got, p.grad, atol=1e-5, rtol=1e-5)
        # Metrics are averaged over ranks, so each rank reports the global retrieval accuracy.
        for k in ("i2t_acc", "t2i_acc"):
            torch.testing.assert_close(r["metrics"][k], ref.metrics[k])
    # Raw (un-averaged) feature gradients are WORLD times the single-process ones.
    torch.testing.assert_close(
        torch.cat([r["g_text"] for r in res]) / WORLD, ref_text, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        torch.cat([r["g_image"] for r in res]) / WORLD, ref_image, atol=1e-5, rtol=1e-5
    )
