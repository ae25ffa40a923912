"""Fine-tuned task models on the shared encoder: VQA and NLVR2 (ViLT's heads and losses).

Both keep the encoder under ``self.onetower`` (the ``base_model_prefix``), store their labels
as ``id2label`` in the config, and load with transformers' ``from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoModelForVisualQuestionAnswering

from onetower.configuration import OneTowerConfig
from onetower.modeling import OneTowerModel, OneTowerPreTrainedModel
from onetower.outputs import IMAGE_SEGMENT, image_stream_name


@dataclass
class ClassifierOutput:
    """What a task model returns.

    Attributes:
        loss: scalar training loss when labels were given, else None.
        logits: `(B, num_labels)`.
        pooled: `(B, D * num_images)` the classifier's input.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    pooled: torch.Tensor


def classifier_mlp(in_dim: int, num_labels: int, hidden: int | None = None) -> nn.Sequential:
    """ViLT's task head: Linear(in, 2 in) -> LayerNorm -> GELU -> Linear(2 in, labels).

    Index layout (0, 1, 3 hold weights) matches ViLT's ``vqa_classifier`` / ``nlvr2_classifier``.
    """
    hidden = hidden or 2 * in_dim
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, num_labels)
    )


def pooled_features(out: Any, pooling: str, num_images: int = 1) -> torch.Tensor:
    """The classifier input of one encoder pass: `(B, D)` for ``"cls"`` (ViLT's pooled
    output), `(B, 3 D)` for ``"cls+patches"`` (pooled output, then the max and the mean of the
    fused image-patch tokens, which have attended to the text), `(B, (1 + 2 I) D)` when each
    row holds I images (the max and mean of each image's patches, in image order).

    Why the second: in a small scene the evidence sits in one or two patches, and a CLS token
    learns to route to them slowly (measured on the synthetic world: a 2-layer ViT classifying
    one shape stayed at chance for 300 steps with CLS or mean pooling, and reached 78% with max
    pooling); the mean keeps counts (how many patches match).
    """
    if pooling == "cls":
        return out.pooler_output
    parts = [out.pooler_output]
    for i in range(num_images):
        patches = out.tokens(f"{image_stream_name(i)}_patches")  # (B, N, D)
        parts += [patches.amax(1), patches.mean(1)]
    return torch.cat(parts, dim=-1)


def pooled_width(config: OneTowerConfig, num_images: int = 1) -> int:
    """Width of :func:`pooled_features` for one pass holding ``num_images`` images."""
    return config.hidden_size * (1 if config.classifier_pooling == "cls" else 1 + 2 * num_images)


class TaskModel(OneTowerPreTrainedModel):
    """Base of the task models: construction from a pretrained encoder, head parameter names."""

    #: module name prefixes of the newly initialised head (higher lr in fine-tuning)
    head_prefixes: tuple[str, ...] = ("classifier.",)
    #: segment rows the task needs (NLVR2 needs a second image segment)
    required_segments: int = 2

    @classmethod
    def from_encoder(
        cls,
        encoder: OneTowerModel | str,
        id2label: dict[int, str],
        classifier_pooling: str = "cls",
        multi_image_method: str = "pair",
        **kwargs: Any,
    ) -> TaskModel:
        """A task model whose encoder is ``encoder`` (a model or a saved folder) and whose head
        is new, with labels ``id2label``; ``classifier_pooling`` and ``multi_image_method`` are
        the :class:`~onetower.OneTowerConfig` fields of the same names.

        The encoder is loaded strictly, so a checkpoint of another model is an error; only
        the head starts random. When the task needs more segment rows than the encoder has,
        the new rows are copied from the image row (ViLT's NLVR2 initialisation).
        """
        if isinstance(encoder, str):
            encoder = OneTowerModel.from_pretrained(encoder, **kwargs)
        if not isinstance(encoder, OneTowerModel):
            raise TypeError(f"expected a OneTowerModel encoder, got {type(encoder).__name__}")
        fields = {
            k: v for k, v in encoder.config.to_dict().items() if k in OneTowerConfig.__annotations__
        }
        fields["num_segments"] = max(encoder.config.num_segments, cls.required_segments)
        fields["classifier_pooling"] = classifier_pooling
        fields["multi_image_method"] = multi_image_method
        config = OneTowerConfig(
            **fields,
            id2label={int(i): str(a) for i, a in id2label.items()},
            label2id={str(a): int(i) for i, a in id2label.items()},
        )
        model = cls(config)
        state = encoder.state_dict()
        seg = state["segment_embeddings.weight"]  # (S, D)
        if seg.shape[0] < config.num_segments:
            extra = seg[IMAGE_SEGMENT : IMAGE_SEGMENT + 1].expand(
                config.num_segments - seg.shape[0], -1
            )
            state["segment_embeddings.weight"] = torch.cat([seg, extra])
        model.onetower.load_state_dict(state, strict=True)
        return model


class OneTowerForQuestionAnswering(TaskModel):
    """VQA: the ViLT head on the pooled output, BCE against soft answer scores.

    ``config.id2label`` is the answer vocabulary. The loss is ViLT's (after ban-vqa):
    ``binary_cross_entropy_with_logits`` averaged over all entries, times the number of answers.
    """

    def __init__(self, config: OneTowerConfig) -> None:
        super().__init__(config)
        if not config.id2label or config.num_labels < 1:
            raise ValueError("OneTowerForQuestionAnswering needs config.id2label (the answers)")
        self.onetower = OneTowerModel(config)
        self.classifier = classifier_mlp(pooled_width(config), config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **encoder_kwargs: Any,
    ) -> ClassifierOutput:
        """Answer scores for questions about images.

        Args:
            input_ids: long `(B, T)` questions.
            pixel_values: `(B, C, H, W)`.
            attention_mask: `(B, T)`.
            labels: float `(B, A)` soft scores in [0, 1] (VQA: 0, .3, .6, .9, 1).
            **encoder_kwargs: passed to :class:`OneTowerModel` (e.g. ``interpolate_pos_encoding``).
        """
        out = self.onetower(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            **encoder_kwargs,
        )
        pooled = pooled_features(out, self.config.classifier_pooling)  # (B, D) or (B, 3 D)
        logits = self.classifier(pooled)  # (B, A)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape:
                raise ValueError(
                    f"labels have shape {tuple(labels.shape)} but the model has "
                    f"{logits.shape[-1]} answers: was the answer vocabulary built differently?"
                )
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            loss = loss * labels.shape[1]
        return ClassifierOutput(loss, logits, pooled)


class OneTowerForImagesAndTextClassification(TaskModel):
    """NLVR2: a statement about several images, classified true / false with cross-entropy.

    ``config.multi_image_method`` picks how the images meet the text (UNITER, section 4.3):
      - ``"pair"`` (ViLT): the text is encoded with each image (image segment ids 1, 2, ...),
        the pooled outputs are concatenated `(B, I D)` and classified by
        Linear(I D, I D) -> LayerNorm -> GELU -> Linear(I D, classes);
      - ``"triplet"``: one sequence ``[text ; image 1 ; image 2]`` (segment ids 0, 1, 2), so
        attention can compare the images (which has more red shapes?), then the same head on
        that pass's pooled features. Half the pair method's text tokens per example.

    The number of images is ``config.num_segments - 1``.
    """

    required_segments = 3

    def __init__(self, config: OneTowerConfig) -> None:
        super().__init__(config)
        if config.num_segments < 3:
            raise ValueError("the pair method needs num_segments >= 3 (text + two images)")
        self.num_images = config.num_segments - 1
        self.onetower = OneTowerModel(config)
        if config.multi_image_method == "triplet":
            width = pooled_width(config, self.num_images)
        else:
            width = pooled_width(config) * self.num_images
        self.classifier = classifier_mlp(width, config.num_labels, hidden=width)  # ViLT: no 2x
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **encoder_kwargs: Any,
    ) -> ClassifierOutput:
        """Classify a statement about several images.

        Args:
            input_ids: long `(B, T)`.
            pixel_values: `(B, I, C, H, W)` with I = the model's number of images.
            attention_mask: `(B, T)`.
            labels: long `(B,)` class indices.
        """
        if pixel_values.dim() != 5 or pixel_values.shape[1] != self.num_images:
            raise ValueError(
                f"pixel_values must be (batch, {self.num_images}, C, H, W), "
                f"got {tuple(pixel_values.shape)}"
            )
        if self.config.multi_image_method == "triplet":
            out = self.onetower(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixel_values,
                **encoder_kwargs,
            )
            pooled = pooled_features(out, self.config.classifier_pooling, self.num_images)
            return self._classify(pooled, labels)
        B, n = pixel_values.shape[:2]
        # One encoder call over the n x B (text, image i) rows, image-major, each row with its
        # image's segment id: the same outputs as n calls of B (tested); a training step at the
        # synthetic NLVR2 size is 1.04x (1 thread) / 1.10x (2 threads) faster on CPU
        # (benchmarks/nlvr2_step.py), and one launch of 2B rows instead of two of B on GPU.
        segments = torch.arange(IMAGE_SEGMENT, IMAGE_SEGMENT + n, device=pixel_values.device)
        out = self.onetower(
            input_ids=input_ids.repeat(n, 1),
            attention_mask=None if attention_mask is None else attention_mask.repeat(n, 1),
            pixel_values=pixel_values.transpose(0, 1).reshape(n * B, *pixel_values.shape[2:]),
            image_segment=segments.repeat_interleave(B),
            **encoder_kwargs,
        )
        features = pooled_features(out, self.config.classifier_pooling)  # (n B, P)
        pooled = features.view(n, B, -1).transpose(0, 1).reshape(B, -1)  # (B, n P)
        return self._classify(pooled, labels)

    def _classify(self, pooled: torch.Tensor, labels: torch.Tensor | None) -> ClassifierOutput:
        logits = self.classifier(pooled)  # (B, classes)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ClassifierOutput(loss, logits, pooled)


AutoModelForVisualQuestionAnswering.register(OneTowerConfig, OneTowerForQuestionAnswering)
# transformers has no Auto class for ViLT's NLVR2 model; sequence classification is the
# nearest (a label for a whole input), so ``AutoModelForSequenceClassification`` loads it.
AutoModelForSequenceClassification.register(OneTowerConfig, OneTowerForImagesAndTextClassification)
