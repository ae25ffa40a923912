"""ViT-style image embedder built on timm's ``PatchEmbed``.

Supports an optional image CLS token, learned or 2-D sin-cos positions (learned tables are
resampled to other grids with timm), BEiT-style mask tokens, and *visible-only* encoding:
given ``keep_ids`` only those patches are embedded and returned, so masked patches never
reach the encoder (MAE / M3AE / FLIP). :func:`sample_patches` draws such keep-ids ViLT's way
(at most ``max_image_len`` real patches per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import PatchEmbed, resample_abs_pos_embed
from torch import nn

from onetower.unimodal.positions import sincos_2d


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened patches in ``PatchEmbed`` order.

    Args:
        images: `(B, C, H, W)`, H and W multiples of ``patch_size``.
        patch_size: P.

    Returns:
        `(B, N, P*P*C)` with N = (H/P)(W/P), pixels ordered (row, col, channel) as in MAE.
    """
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: `(B, N, P*P*C)` -> `(B, C, H, W)`."""
    return rearrange(
        patches,
        "b (h w) (p q c) -> b c (h p) (w q)",
        h=grid[0],
        w=grid[1],
        p=patch_size,
        q=patch_size,
    )


#: How a learned position table is resampled to another patch grid.
RESAMPLE_MODES = ("bicubic", "bilinear")


def sample_patches(
    patch_valid: torch.Tensor | None, num_patches: int, limit: int, batch_size: int
) -> torch.Tensor:
    """ViLT's patch sampling (``visual_embed``'s ``max_image_len``): keep-ids for at most
    ``limit`` patches per image.

    The kept length is ``Nk = min(limit, most real patches of any image)``. An image with at
    least ``Nk`` real patches keeps ``Nk`` of them drawn without replacement; an image with
    fewer keeps all of them and fills the rest with -1 slots (masked). The draws are ViLT's own
    ``torch.multinomial`` calls, row by row on the global CPU generator, so the same seed
    selects the same patches as transformers' ``ViltModel``; ViLT's draw of padding patches for
    the filler slots is made (and dropped) to keep the generator in step.

    Args:
        patch_valid: bool `(B, N)` real patches (from a pixel mask), or None = every patch.
        num_patches: N.
        limit: the most patches kept per image (> 0).
        batch_size: B.

    Returns:
        long `(B, Nk)` on the CPU: kept patch indices in grid order, then -1 slots.
    """
    if patch_valid is None:  # every image has all N patches: no filler, no host sync
        n = min(limit, num_patches)
        ones = torch.ones(num_patches)
        return torch.stack(
            [torch.multinomial(ones, n).sort().values for _ in range(batch_size)]
        )  # (B, Nk)
    valid = patch_valid.cpu()  # the counts decide the shapes: a host sync, as in ViLT
    n = min(limit, int(valid.sum(1).max()))
    rows = []
    for row in valid:
        real, pad = row.nonzero()[:, 0], (~row).nonzero()[:, 0]  # grid indices
        if len(real) >= n:
            rows.append(real[torch.multinomial(torch.ones(len(real)), n)].sort().values)
        else:
            torch.multinomial(torch.ones(len(pad)), n - len(real), replacement=True)
            rows.append(torch.cat([real, real.new_full((n - len(real),), -1)]))
    return torch.stack(rows)  # (B, Nk)


class ImageEmbedder(nn.Module):
    """Embed images into `(B, [1 +] N, D)` patch tokens.

    Args:
        image_size: training resolution (square); sets the grid of the position table.
        patch_size: P.
        in_chans: number of image channels C.
        dim: width D.
        cls_token: prepend a learned image CLS token (ViLT, FLAVA, BEiT-3).
        position: ``"learned"`` (ViT / ViLT) or ``"sincos"`` (fixed, MAE / M3AE).
        mask_token: create a learned token that replaces masked patches (BEiT / FLAVA MIM).
        dropout: dropout on the output.
        resample: how a learned table is resampled to another grid: ``"bicubic"`` (timm) or
            ``"bilinear"`` (ViLT: bilinear with ``align_corners=True``).
        norm: LayerNorm over the tokens after the positions (CLIP's ``norm_pre``).
        norm_eps: its epsilon.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_chans: int,
        dim: int,
        cls_token: bool = True,
        position: str = "learned",
        mask_token: bool = False,
        dropout: float = 0.0,
        resample: str = "bicubic",
        norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        self.patch_size, self.in_chans = patch_size, in_chans
        self.patch_embed = PatchEmbed(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=dim,
            strict_img_size=False,
        )
        self.grid: tuple[int, int] = tuple(self.patch_embed.grid_size)
        self.num_prefix_tokens = int(cls_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if mask_token else None
        self.position = position
        n_pos = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        if position == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, dim))
        elif position == "sincos":
            self.pos_embed = None  # computed for whatever grid comes in
        else:
            raise ValueError(f"image position must be 'learned' or 'sincos', got {position!r}")
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        self.resample = resample
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def _positions(
        self, grid: tuple[int, int], interpolate: bool, like: torch.Tensor
    ) -> torch.Tensor:
        """Position table `(1, prefix + h*w, D)` for ``grid`` (prefix rows are zero for sincos)."""
        if self.pos_embed is None:
            table = sincos_2d(grid, like.shape[-1]).to(like)[None]  # (1, h*w, D)
            prefix = table.new_zeros(1, self.num_prefix_tokens, table.shape[-1])
            return torch.cat([prefix, table], dim=1)
        if grid == self.grid:
            return self.pos_embed
        if not interpolate:
            raise ValueError(
                f"image of {grid[0]}x{grid[1]} patches does not match the model's "
                f"{self.grid[0]}x{self.grid[1]} grid (image_size "
                f"{self.grid[0] * self.patch_size}); pass interpolate_pos_encoding=True or "
                "call resize_position_embeddings()"
            )
        prefix = self.pos_embed[:, : self.num_prefix_tokens]
        return torch.cat([prefix, self._spatial(grid)], dim=1)

    def _spatial(self, grid: tuple[int, int]) -> torch.Tensor:
        """The learned patch positions resampled to ``grid``, `(1, h*w, D)`."""
        table = self.pos_embed[:, self.num_prefix_tokens :]  # (1, N, D)
        if grid == self.grid:
            return table
        if self.resample == "bicubic":
            return resample_abs_pos_embed(
                table, new_size=list(grid), old_size=list(self.grid), num_prefix_tokens=0
            )
        # ViLT: (1, N, D) -> (1, D, gh, gw), bilinear with aligned corners, back to (1, h*w, D)
        spatial = table.transpose(1, 2).reshape(1, -1, *self.grid)
        out = F.interpolate(spatial, size=grid, mode="bilinear", align_corners=True)
        return out.flatten(2).transpose(1, 2)

    def masked_positions(
        self, pixel_mask: torch.Tensor, grid: tuple[int, int], like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image positions for a padded batch, as ViLT's ``visual_embed``.

        Each image's real region (the top-left ``h x w`` patches of its pixel mask, sampled at
        the patch grid like ViLT) gets the position table resampled to ``h x w``; padding
        patches get zero positions and are masked out.

        Args:
            pixel_mask: `(B, H, W)`, 1 = real pixel.
            grid: the batch's patch grid ``(H/P, W/P)``.
            like: a tensor with the output dtype / device.

        Returns:
            ``(positions (B, h*w, D) for the patches, patch mask bool (B, h*w))``.
        """
        if pixel_mask.dim() != 3:
            raise ValueError(
                f"pixel_mask must be (batch, height, width), got shape {tuple(pixel_mask.shape)}"
            )
        patches = self._patch_grid_mask(pixel_mask, grid)  # (B, gh, gw)
        heights = patches.sum(dim=1)[:, 0].tolist()  # real rows in the first column
        widths = patches.sum(dim=2)[:, 0].tolist()  # real columns in the first row
        cache: dict[tuple[int, int], torch.Tensor] = {}
        tables = []
        for h, w in zip(heights, widths, strict=True):
            if (h, w) not in cache:
                if self.pos_embed is None:
                    table = sincos_2d((h, w), like.shape[-1]).to(like)[None]  # (1, h*w, D)
                else:
                    table = self._spatial((h, w)).to(like)
                table = table.transpose(1, 2).reshape(1, -1, h, w)  # (1, D, h, w)
                table = F.pad(table, (0, grid[1] - w, 0, grid[0] - h))  # (1, D, gh, gw)
                cache[(h, w)] = table.flatten(2).transpose(1, 2)  # (1, gh*gw, D)
            tables.append(cache[(h, w)])
        return torch.cat(tables, dim=0), patches.flatten(1).bool()

    @staticmethod
    def _patch_grid_mask(pixel_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Long `(B, gh, gw)`, 1 = real patch: the pixel mask sampled (nearest) at the patch
        grid, as ViLT does."""
        return F.interpolate(pixel_mask[:, None].float(), size=grid).long()[:, 0]

    def sample_keep_ids(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None,
        limit: int,
        keep_ids: torch.Tensor | None = None,
        masked_patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Keep-ids `(B, Nk)` (on the images' device) for at most ``limit`` patches per image,
        ViLT's way (:func:`sample_patches`); pass them to :meth:`forward` as ``keep_ids``.

        Raises:
            ValueError: ``keep_ids`` or ``masked_patches`` given too (they choose or mask
                patches of the full grid themselves), or several images per row.
        """
        setting = f"max_image_patches={limit}"
        if keep_ids is not None or masked_patches is not None:
            given = "image_keep_ids" if keep_ids is not None else "bool_masked_pos"
            raise ValueError(
                f"{given} given to a model with {setting}: patch sampling already chooses "
                f"which patches are encoded; set config.max_image_patches=None to use {given}"
            )
        if pixel_values.dim() == 5:
            raise ValueError(
                f"several images per row (pixel_values (B, I, C, H, W)) with {setting}: "
                "encode the images one call each, or set config.max_image_patches=None"
            )
        grid = self.check_pixels(pixel_values)
        valid = None
        if pixel_mask is not None:
            if pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[2:]):
                raise ValueError(
                    f"pixel_mask has shape {tuple(pixel_mask.shape)}, expected "
                    f"{(pixel_values.shape[0], *pixel_values.shape[2:])} (batch, height, width)"
                )
            valid = self._patch_grid_mask(pixel_mask, grid).flatten(1).bool()  # (B, N)
        keep = sample_patches(valid, grid[0] * grid[1], limit, pixel_values.shape[0])
        if pixel_values.is_cuda:  # a pinned copy does not wait for the GPU queue
            return keep.pin_memory().to(pixel_values.device, non_blocking=True)
        return keep

    @torch.no_grad()
    def resize_position_embeddings(self, image_size: int) -> None:
        """Permanently resample the learned table to a new resolution (e.g. fine-tuning at 480)."""
        if image_size % self.patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {self.patch_size}"
            )
        grid = (image_size // self.patch_size,) * 2
        if self.pos_embed is not None and grid != self.grid:
            self.pos_embed = nn.Parameter(self._positions(grid, True, self.pos_embed).clone())
        self.patch_embed.img_size = (image_size, image_size)
        self.patch_embed.grid_size = grid
        self.patch_embed.num_patches = grid[0] * grid[1]
        self.grid = grid

    def check_pixels(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """Validate `(B, C, H, W)` and return its patch grid ``(H/P, W/P)``."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape "
                f"{tuple(pixel_values.shape)}"
            )
        _, C, H, W = pixel_values.shape
        if C != self.in_chans:
            raise ValueError(f"pixel_values have {C} channels, the model expects {self.in_chans}")
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}"
            )
        return H // self.patch_size, W // self.patch_size

    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_ids: torch.Tensor | None = None,
        masked_patches: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        pixel_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """Embed patches (and the CLS token).

        Args:
            pixel_values: `(B, C, H, W)`.
            keep_ids: long `(B, Nk)` indices of the patches to keep, -1 = padding slot.
                Patches not listed are dropped *after* the position is added.
            masked_patches: bool `(B, N)`, True = replace the patch embedding with the mask
                token before the position is added (BEiT / FLAVA).
            interpolate_pos_encoding: resample the learned table when the grid differs.
            pixel_mask: `(B, H, W)` 1 = real pixel, for a batch of images of different sizes
                padded bottom / right (ViLT): each image gets the position table resampled to
                its own patch grid and its padding patches are masked (see
                :meth:`masked_positions`).

        Returns:
            ``(tokens (B, prefix + Nk, D), valid (B, prefix + Nk) bool or None, grid)``; valid
            is None without ``keep_ids`` or ``pixel_mask`` (every slot is real).
        """
        grid = self.check_pixels(pixel_values)
        x = self.patch_embed(pixel_values)  # (B, N, D)
        if masked_patches is not None:
            if self.mask_token is None:
                raise ValueError(
                    "masked_patches given but the model has no mask token (set use_mask_token)"
                )
            if masked_patches.shape != x.shape[:2]:
                raise ValueError(
                    f"masked_patches has shape {tuple(masked_patches.shape)}, expected {tuple(x.shape[:2])}"
                )
            w = masked_patches.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        valid = None
        if pixel_mask is None:
            pos = self._positions(grid, interpolate_pos_encoding, x)
            x = x + pos[:, self.num_prefix_tokens :]
        else:
            if pixel_mask.shape != (x.shape[0], *pixel_values.shape[2:]):
                raise ValueError(
                    f"pixel_mask has shape {tuple(pixel_mask.shape)}, expected "
                    f"{(x.shape[0], *pixel_values.shape[2:])} (batch, height, width)"
                )
            spatial, valid = self.masked_positions(pixel_mask, grid, x)
            x = x + spatial
            pos = self.pos_embed if self.pos_embed is not None else x.new_zeros(1, 1, x.shape[-1])
        if keep_ids is not None:
            if keep_ids.is_floating_point() or keep_ids.dtype == torch.bool:
                raise TypeError("keep_ids must be integer patch indices")
            # (B, Nk) -> (B, Nk, D): gather the kept patches; -1 slots read patch 0 and are masked
            index = keep_ids.clamp(min=0).unsqueeze(-1).expand(-1, -1, x.shape[-1])
            x = torch.gather(x, 1, index)
            slot = keep_ids >= 0
            valid = slot if valid is None else slot & torch.gather(valid, 1, keep_ids.clamp(min=0))
        if self.cls_token is not None:
            cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
            if valid is not None:
                valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)
        return self.dropout(self.norm(x)), valid, grid
