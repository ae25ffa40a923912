"""The joint sequence of one encoder pass: streams gathered in order, with what follows from
them (the key mask, the segment ids, the token the pooler reads).

``OneTowerModel`` appends a text stream and one or more image streams, then concatenates them
for the fusion encoder; heads later find each stream through the output's segment map.
"""

from __future__ import annotations

import torch

#: ``bidirectional``: every token attends every real token. ``seq2seq`` (captioning, PrefixLM
#: over ``[image ; text]``): image tokens attend the image, text token i the image and text
#: tokens <= i.
ATTENTION_PATTERNS = ("bidirectional", "seq2seq")


class Streams:
    """The streams of one pass, in sequence order."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.masks: list[torch.Tensor | None] = []
        self.segments: list[torch.Tensor] = []
        self.slices: dict[str, slice] = {}
        self.cls_positions: dict[str, int] = {}

    def add(
        self, name: str, x: torch.Tensor, valid: torch.Tensor | None, segment: int | torch.Tensor
    ) -> int:
        """Append a stream `(B, L_m, D)` with one segment id, or one per row (long `(B,)`);
        returns where it starts along L."""
        start = sum(p.shape[1] for p in self.parts)
        self.parts.append(x)
        self.masks.append(valid)
        if isinstance(segment, torch.Tensor):  # (B, L_m)
            self.segments.append(segment[:, None].expand(-1, x.shape[1]))
        else:  # (1, L_m)
            self.segments.append(
                torch.full((1, x.shape[1]), segment, device=x.device, dtype=torch.long)
            )
        self.slices[name] = slice(start, start + x.shape[1])
        return start

    def prepend(self, name: str, x: torch.Tensor) -> None:
        """Put a one-token stream `(B, 1, D)` (segment 0, never padded) in front of the others,
        as the CLS the pooler reads (FLAVA's multimodal CLS); the other streams shift by one."""
        n = x.shape[1]
        self.parts.insert(0, x)
        self.masks.insert(0, None)
        self.segments.insert(0, torch.zeros((1, n), device=x.device, dtype=torch.long))
        self.slices = {name: slice(0, n)} | {
            k: slice(v.start + n, v.stop + n) for k, v in self.slices.items()
        }
        self.cls_positions = {name: 0} | {k: v + n for k, v in self.cls_positions.items()}

    def tokens(self) -> torch.Tensor:
        """The streams concatenated along L, `(B, L, D)`."""
        return torch.cat(self.parts, dim=1) if len(self.parts) > 1 else self.parts[0]

    def key_mask(self) -> torch.Tensor | None:
        """Bool `(B, L)` real-token mask of the whole sequence; None when no stream is padded."""
        if all(m is None for m in self.masks):
            return None
        ref = next(m for m in self.masks if m is not None)
        return torch.cat(
            [
                ref.new_ones(ref.shape[0], p.shape[1]) if m is None else m
                for m, p in zip(self.masks, self.parts, strict=True)
            ],
            dim=1,
        )

    def attention_mask(
        self, key_mask: torch.Tensor | None, pattern: str = "bidirectional"
    ) -> torch.Tensor | None:
        """The fusion encoder's bool mask (True = may attend): `(B, 1, 1, L)` key padding for
        ``bidirectional`` (None without padding: SDPA's mask-free path), `(B | 1, 1, L, L)`
        for ``seq2seq``."""
        keys = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
        if pattern == "bidirectional" or "text" not in self.slices:
            return keys
        L = sum(p.shape[1] for p in self.parts)
        device = self.parts[0].device
        text = torch.zeros(L, dtype=torch.bool, device=device)
        text[self.slices["text"]] = True
        # image queries see image keys; text queries see image keys and earlier text keys
        causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
        allowed = torch.where(text[:, None], ~text[None, :] | causal, ~text[None, :])  # (L, L)
        allowed = allowed[None, None]  # (1, 1, L, L)
        return allowed if keys is None else allowed & keys

    def segment_ids(self, batch_size: int) -> torch.Tensor:
        """Long `(B, L)`: a (1, L) row expanded to B (not copied), unless segments are per row."""
        if any(seg.shape[0] > 1 for seg in self.segments):  # per-row image segments
            return torch.cat([seg.expand(batch_size, -1) for seg in self.segments], dim=1)
        row = torch.cat(self.segments, dim=1)
        return row.expand(batch_size, row.shape[1])

    def pool_token(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The token the pooler reads from ``x`` `(B, L, D)`: the first CLS, else the mean of
        the image patches (over the real ones when ``mask`` is given)."""
        for name in ("fusion", "text", "image"):
            if name in self.cls_positions:
                return x[:, self.cls_positions[name]]
        patches = x[:, self.slices["image_patches"]]  # (B, N, D)
        if mask is None:
            return patches.mean(dim=1)
        w = mask[:, self.slices["image_patches"]].unsqueeze(-1).to(x.dtype)  # (B, N, 1)
        return (patches * w).sum(1) / w.sum(1).clamp(min=1)


def keep_text(
    x: torch.Tensor, valid: torch.Tensor | None, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the kept text tokens: `(B, T, D)` -> `(B, Tk, D)` and their mask `(B, Tk)`
    (``keep`` long `(B, Tk)`, -1 = padding slot)."""
    index = keep.clamp(min=0)
    kept = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, Tk, D)
    slot = keep >= 0
    return kept, slot if valid is None else slot & torch.gather(valid, 1, index)
