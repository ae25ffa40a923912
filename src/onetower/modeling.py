"""``OneTowerModel``: the shared single-stream vision-language encoder.

One transformer reads ``[text tokens ; image tokens]`` with a segment (modality-type)
embedding added to each stream, as in ViLT. Optional FLAVA-style unimodal towers run before
fusion, and optional BEiT-3-style Multiway blocks give each modality its own LayerNorms and
feed-forward network. The same model runs text-only, image-only and paired inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel

from onetower.configuration import OneTowerConfig
from onetower.layers import BlockStack, Pooler
from onetower.outputs import IMAGE_SEGMENT, TEXT_SEGMENT, EncoderOutput, image_stream_name
from onetower.pretrained import OneTowerPreTrainedModel
from onetower.sequence import ATTENTION_PATTERNS, Streams, keep_text
from onetower.unimodal import ImageEmbedder, TextEmbedder, UnimodalTower


class OneTowerModel(OneTowerPreTrainedModel):
    """The shared encoder. See :class:`~onetower.OneTowerConfig` for its options.

    Layout of the joint sequence: ``[text (CLS ... SEP) ; image (CLS + patches)]``; the pooled
    output is dense + tanh on the first CLS token (the text CLS when there is text).
    """

    def __init__(self, config: OneTowerConfig) -> None:
        super().__init__(config)
        c = config
        D = c.hidden_size
        text_eps = c.layer_norm_eps if c.text_layer_norm_eps is None else c.text_layer_norm_eps
        self.text = TextEmbedder(
            c.vocab_size,
            D,
            c.max_text_len,
            c.text_position,
            c.text_embed_norm,
            text_eps,
            c.hidden_dropout_prob,
            c.pad_token_id,
        )
        self.image = ImageEmbedder(
            c.image_size,
            c.patch_size,
            c.num_channels,
            D,
            c.image_cls_token,
            c.image_position,
            c.use_mask_token,
            c.hidden_dropout_prob,
            c.image_position_resample,
            c.image_embed_norm,
            c.layer_norm_eps,
        )
        tower = dict(
            dim=D,
            num_heads=c.num_attention_heads,
            mlp_hidden=c.intermediate_size,
            qkv_bias=c.qkv_bias,
            drop=c.hidden_dropout_prob,
            attn_drop=c.attention_probs_dropout_prob,
            drop_path=c.drop_path_rate,
            norm_eps=c.layer_norm_eps,
        )
        self.text_tower = (
            UnimodalTower(
                c.text_tower_layers,
                **{**tower, "norm_eps": text_eps},
                post_norm=c.text_tower_post_norm,
                fusion_prenorm=c.tower_fusion_prenorm,
            )
            if c.text_tower_layers
            else None
        )
        self.image_tower = (
            UnimodalTower(c.image_tower_layers, **tower, fusion_prenorm=c.tower_fusion_prenorm)
            if c.image_tower_layers
            else None
        )
        self.segment_embeddings = nn.Embedding(c.num_segments, D) if c.segment_embeddings else None
        # FLAVA's multimodal CLS, in front of the fused sequence
        self.fusion_cls = nn.Parameter(torch.zeros(1, 1, D)) if c.fusion_cls_token else None
        self.encoder = BlockStack(
            c.num_hidden_layers,
            num_experts=2 if c.multiway else 1,
            multiway_attention=c.multiway_attention,
            subln=c.subln,
            **tower,
        )
        self.pooler = Pooler(D)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_keep_ids: torch.Tensor | None = None,
        text_keep_ids: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        patch_attention_mask: torch.Tensor | None = None,
        image_segment: int | torch.Tensor = IMAGE_SEGMENT,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        fuse: bool = True,
        attention: str = "bidirectional",
        pixel_mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Encode text, image or both.

        Args:
            input_ids: long `(B, T)` (first token is the text CLS), or None for image-only.
            attention_mask: `(B, T)` 1 = real token, 0 = padding; None = no padding.
            pixel_values: `(B, C, H, W)`, or None for text-only; `(B, I, C, H, W)` puts I
                images in each row's sequence after the text (UNITER's NLVR2 "triplet"), image
                i with segment id ``image_segment + i``, each through the image embedding (and
                tower) on its own, as streams ``"image"``, ``"image2"``, ...
            image_keep_ids: long `(B, Nk)` patch indices to encode (visible-only encoding;
                -1 = padding slot). None = every patch in grid order (or, with
                ``config.max_image_patches``, ViLT's sample of them: given, an error).
            text_keep_ids: long `(B, Tk)` ascending positions of the text tokens to encode
                (M3AE drops masked tokens; -1 = padding slot). Position 0 ([CLS]) must be kept.
            bool_masked_pos: bool `(B, N)` patches replaced by the mask token (BEiT / FLAVA).
            patch_attention_mask: bool `(B, N)` over the full patch grid, True = may be
                attended (padded images); gathered by ``image_keep_ids`` when both are given.
            image_segment: segment id of the image stream (1; 2 for NLVR2's second image), or
                long `(B,)`, one per row (NLVR2's images of a pair encoded in one call).
            interpolate_pos_encoding: accept a patch grid other than the configured one by
                resampling the learned position table.
            output_hidden_states: also return the input of every fusion block.
            fuse: run the fusion encoder. ``False`` (models with unimodal towers only) stops
                after the towers: ``last_hidden_state`` is then the concatenated tower states
                and ``pooler_output`` the first CLS tower state, with no pooler applied
                (FLAVA's unimodal views).
            pixel_mask: `(B, H, W)` 1 = real pixel, for images of different sizes padded
                bottom / right into one batch (ViLT's variable resolution): each image gets
                the position table resampled to its own patch grid
                (``config.image_position_resample``) and its padding patches are masked.
            attention: ``"bidirectional"`` (every token sees every real token) or
                ``"seq2seq"`` (captioning / PrefixLM: image tokens see the image, each text
                token sees the image and the text up to itself); for models without a text
                tower (the tower would see the whole caption).

        Returns:
            :class:`~onetower.outputs.EncoderOutput`.
        """
        if input_ids is None and pixel_values is None:
            raise ValueError("give input_ids, pixel_values or both")
        if attention not in ATTENTION_PATTERNS:
            raise ValueError(f"attention must be one of {ATTENTION_PATTERNS}, got {attention!r}")
        if attention == "seq2seq" and self.text_tower is not None and input_ids is not None:
            raise ValueError(
                "attention='seq2seq' needs a model without a text tower: the tower would let "
                "each text token see the tokens after it"
            )
        limit = self.config.max_image_patches
        if pixel_values is not None and limit is not None:  # ViLT's patch sampling
            image_keep_ids = self.image.sample_keep_ids(
                pixel_values, pixel_mask, limit, image_keep_ids, bool_masked_pos
            )
        num_images = 1
        if pixel_values is not None and pixel_values.dim() == 5:  # (B, I, C, H, W)
            num_images = self._check_images(
                pixel_values,
                image_segment,
                fuse,
                image_keep_ids,
                bool_masked_pos,
                patch_attention_mask,
                pixel_mask,
            )
            pixel_values = pixel_values.flatten(0, 1)  # (B I, C, H, W): image-major per row
        else:
            self._check_segment(
                image_segment, None if pixel_values is None else pixel_values.shape[0]
            )
        streams = Streams()
        unimodal: dict[str, torch.Tensor] = {}
        grid = None
        if input_ids is not None:
            x = self.text(input_ids)  # (B, T, D)
            valid = None if attention_mask is None else attention_mask.bool()
            if valid is not None and valid.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask has shape {tuple(valid.shape)}, input_ids {tuple(input_ids.shape)}"
                )
            if text_keep_ids is not None:  # drop after the positions are added, like patches
                x, valid = keep_text(x, valid, text_keep_ids)
            if self.text_tower is not None:  # projected into fusion only when fusing
                unimodal["text"], projected = self.text_tower(x, valid, project=fuse)
                x = projected if fuse else unimodal["text"]
            self._add_text(streams, x, valid)
        if pixel_values is not None:
            x, valid, grid = self.image(
                pixel_values, image_keep_ids, bool_masked_pos, interpolate_pos_encoding, pixel_mask
            )  # (B, prefix + Nk, D)
            if patch_attention_mask is not None:
                valid = self._patch_valid(patch_attention_mask.bool(), image_keep_ids, valid, grid)
            if self.image_tower is not None:  # projected into fusion only when fusing
                unimodal["image"], projected = self.image_tower(x, valid, project=fuse)
                x = projected if fuse else unimodal["image"]
            if num_images == 1:
                self._add_image(streams, x, valid, image_segment)
            else:  # one stream per image, segment ids image_segment, image_segment + 1, ...
                x = x.unflatten(0, (-1, num_images))  # (B, I, prefix + N, D)
                for i in range(num_images):  # no patch mask: _check_images refused its sources
                    self._add_image(streams, x[:, i], None, image_segment + i, image_stream_name(i))
                if "image" in unimodal:  # (B, I (prefix + N), D), in the sequence's image order
                    unimodal["image"] = (
                        unimodal["image"].unflatten(0, (-1, num_images)).flatten(1, 2)
                    )
        if not fuse:
            missing = [m for m in streams.slices if m in ("text", "image") and m not in unimodal]
            if missing:
                raise ValueError(
                    f"fuse=False needs a unimodal tower for {missing}; the model has none"
                )
            streams.parts = [unimodal[m] for m in ("text", "image") if m in unimodal]
        out = self._encode(streams, fuse, output_hidden_states, attention)
        out.image_keep_ids, out.text_keep_ids, out.image_grid = image_keep_ids, text_keep_ids, grid
        out.unimodal_states = unimodal
        return out

    def fuse_unimodal(
        self,
        text_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_states: torch.Tensor,
        image_segment: int = IMAGE_SEGMENT,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """The fusion half of :meth:`forward`, on unimodal tower outputs.

        ``forward(input_ids, attention_mask, pixel_values)`` equals
        ``fuse_unimodal(t.unimodal_states["text"], attention_mask, i.unimodal_states["image"])``
        with ``t``, ``i`` the ``fuse=False`` text and image passes. Their rows may be re-paired
        first: FLAVA-style ITM pairs then reuse the towers' clean pass instead of running the
        towers again on every pair.

        Args:
            text_states: `(B, T, D)` text tower outputs (every token; no ``text_keep_ids``).
            attention_mask: `(B, T)` 1 = real token, or None.
            image_states: `(B, prefix + N, D)` image tower outputs (the full patch grid).
            image_segment, output_hidden_states: as in :meth:`forward`.
        """
        if self.text_tower is None or self.image_tower is None:
            raise ValueError("fuse_unimodal needs a model with both unimodal towers")
        if self.config.tower_fusion_prenorm:
            raise ValueError(
                "fuse_unimodal needs the towers' normed states to be their fusion input; this "
                "model (tower_fusion_prenorm=true) projects the pre-norm states: call forward"
            )
        if text_states.shape[0] != image_states.shape[0]:
            raise ValueError(
                f"text states have {text_states.shape[0]} rows, image states {image_states.shape[0]}"
            )
        streams = Streams()
        valid = None if attention_mask is None else attention_mask.bool()
        self._add_text(streams, self.text_tower.to_fusion(text_states), valid)
        self._add_image(streams, self.image_tower.to_fusion(image_states), None, image_segment)
        out = self._encode(streams, True, output_hidden_states)
        n_patches = image_states.shape[1] - self.image.num_prefix_tokens
        out.image_grid = self.image.grid if n_patches == self.image.num_patches else None
        out.unimodal_states = {"text": text_states, "image": image_states}
        return out

    def _check_segment(self, segment: int | torch.Tensor, rows: int | None) -> None:
        n = self.config.num_segments
        if isinstance(segment, torch.Tensor):
            if segment.dim() != 1 or (rows is not None and segment.shape[0] != rows):
                raise ValueError(
                    f"image_segment must be an int or one id per row ({rows},), "
                    f"got shape {tuple(segment.shape)}"
                )
            # a host sync on CUDA, so checked on CPU only (out-of-range ids fail in the lookup)
            bad = segment.device.type == "cpu" and bool(((segment <= 0) | (segment >= n)).any())
        else:
            bad = not 0 < segment < n
        if bad:
            raise ValueError(
                f"image_segment {segment} is out of range: the model has {n} segments (0 = text)"
            )

    def _check_images(
        self,
        pixel_values: torch.Tensor,
        image_segment: int | torch.Tensor,
        fuse: bool,
        *per_patch: torch.Tensor | None,
    ) -> int:
        """Validate several images per row; returns how many."""
        n = pixel_values.shape[1]
        if (
            isinstance(image_segment, torch.Tensor)
            or not fuse
            or any(t is not None for t in per_patch)
        ):
            raise ValueError(
                "several images per row (pixel_values of shape (B, I, C, H, W)) take an int "
                "image_segment and no patch dropping, patch masks or fuse=False"
            )
        last = image_segment + n - 1
        if n < 1 or image_segment < 1 or last >= self.config.num_segments:
            raise ValueError(
                f"{n} images from segment {image_segment} need segment ids up to {last}, but "
                f"the model has {self.config.num_segments} segments (0 = text)"
            )
        return n

    def _add_text(self, s: Streams, x: torch.Tensor, valid: torch.Tensor | None) -> None:
        if self.segment_embeddings is not None:
            x = x + self.segment_embeddings.weight[TEXT_SEGMENT]
        s.add("text", x, valid, TEXT_SEGMENT)
        s.cls_positions["text"] = 0

    def _add_image(
        self,
        s: Streams,
        x: torch.Tensor,
        valid: torch.Tensor | None,
        segment: int | torch.Tensor,
        name: str = "image",
    ) -> None:
        if self.segment_embeddings is None:
            embedding = 0.0
        elif isinstance(segment, torch.Tensor):
            embedding = self.segment_embeddings(segment)[:, None]  # (B, 1, D)
        else:
            embedding = self.segment_embeddings.weight[segment]  # (D,)
        start = s.add(name, x + embedding, valid, segment)
        prefix = self.image.num_prefix_tokens
        s.slices[f"{name}_patches"] = slice(start + prefix, start + x.shape[1])
        if prefix:
            s.cls_positions[name] = start

    def _encode(
        self, s: Streams, fuse: bool, output_hidden_states: bool, attention: str = "bidirectional"
    ) -> EncoderOutput:
        """Concatenate the streams, run the fusion encoder (if ``fuse``) and pool."""
        if fuse and self.fusion_cls is not None:
            ref = s.parts[0]
            s.prepend("fusion", self.fusion_cls.to(ref.dtype).expand(ref.shape[0], -1, -1))
        key_mask = s.key_mask()  # (B, L) or None
        x = s.tokens()  # (B, L, D)
        split = s.slices["text"].stop if "text" in s.slices else 0
        attn_mask = s.attention_mask(key_mask, attention)  # (B | 1, 1, 1 | L, L) or None
        hidden = None
        if fuse:
            x, hidden = self.encoder(x, attn_mask, split, return_all=output_hidden_states)
        pooled = s.pool_token(x, key_mask)
        return EncoderOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(pooled) if fuse else pooled,
            attention_mask=key_mask,
            segment_ids=s.segment_ids(x.shape[0]),
            modality_slices=s.slices,
            cls_positions=s.cls_positions,
            hidden_states=hidden,
        )

    def _patch_valid(
        self,
        patch_mask: torch.Tensor,
        keep_ids: torch.Tensor | None,
        valid: torch.Tensor | None,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """Combine a full-grid patch mask `(B, N)` with the kept-slot mask into `(B, prefix + Nk)`."""
        if patch_mask.dim() != 2 or patch_mask.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f"patch_attention_mask has shape {tuple(patch_mask.shape)}, expected "
                f"(batch, {grid[0] * grid[1]}) for a {grid[0]}x{grid[1]} patch grid"
            )
        if keep_ids is not None:
            patch_mask = torch.gather(patch_mask, 1, keep_ids.clamp(min=0))  # (B, Nk)
        prefix = patch_mask.new_ones(patch_mask.shape[0], self.image.num_prefix_tokens)
        out = torch.cat([prefix, patch_mask], dim=1)
        if valid is not None:
            out = out & valid
        return out


AutoModel.register(OneTowerConfig, OneTowerModel)
