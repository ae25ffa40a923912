"""VQA questions and NLVR2 statements about synthetic scenes (pure functions of a Random)."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass

from onetower.data.world import (
    COLOURS,
    NUMBER_WORDS,
    SHAPES,
    Scene,
    relation,
    sample_scene,
    where,
)

#: Each of the 10 synthetic annotators answers at random (same answer type) this often.
ANNOTATOR_NOISE = 0.1
YES_NO = ("yes", "no")
COUNTS = ("0", "1", "2", "3")


@dataclass(frozen=True)
class QA:
    """One question with its answer type, question type and 10 annotator answers."""

    question: str
    question_type: str
    answer_type: str
    answers: tuple[str, ...]

    @property
    def multiple_choice_answer(self) -> str:
        # Most frequent answer; ties go to the first seen, as a deterministic rule.
        return Counter(self.answers).most_common(1)[0][0]


def _annotate(truth: str, choices: tuple[str, ...], rng: random.Random) -> tuple[str, ...]:
    return tuple(
        rng.choice(choices) if rng.random() < ANNOTATOR_NOISE else truth for _ in range(10)
    )


def questions(scene: Scene, rng: random.Random, k: int = 3) -> list[QA]:
    """Up to ``k`` distinct-kind questions about ``scene``.

    The colour question names a shape that occurs once in the scene; since colour is drawn
    independently of shape, its answer given the question text alone is uniform over colours.
    """
    colours = tuple(COLOURS)
    out: list[QA] = []
    kinds = ["colour", "count", "exists", "shape"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "colour":
            if not (unique := [o for o in scene.objects if scene.count(shape=o.shape) == 1]):
                continue
            o = rng.choice(unique)
            q = QA(
                f"what colour is the {o.shape}?",
                "what colour is the",
                "other",
                _annotate(o.colour, colours, rng),
            )
        elif kind == "count":
            shape = rng.choice(SHAPES)
            truth = str(scene.count(shape=shape))
            q = QA(
                f"how many {shape}s are there?", "how many", "number", _annotate(truth, COUNTS, rng)
            )
        elif kind == "exists":
            # Half the time ask about an object that is there, so yes/no stays balanced.
            if rng.random() < 0.5:
                o = rng.choice(scene.objects)
                colour, shape = o.colour, o.shape
            else:
                colour, shape = rng.choice(colours), rng.choice(SHAPES)
            truth = "yes" if scene.count(shape=shape, colour=colour) else "no"
            q = QA(
                f"is there a {colour} {shape}?",
                "is there a",
                "yes/no",
                _annotate(truth, YES_NO, rng),
            )
        else:
            if not (unique := [o for o in scene.objects if scene.count(colour=o.colour) == 1]):
                continue
            o = rng.choice(unique)
            q = QA(
                f"what shape is the {o.colour} object?",
                "what shape is the",
                "other",
                _annotate(o.shape, SHAPES, rng),
            )
        out.append(q)
        if len(out) == k:
            break
    return out


#: NLVR2 statement kinds; a statement's kind is drawn before (and apart from) its label.
STATEMENT_KINDS = ("more", "both", "total", "side")


def _near(count: int, rng: random.Random, top: int) -> int | None:
    """A number for "exactly N" claims: the true count half the time, else one off it, so a
    number alone says nothing about the truth (None when it falls outside 1..top)."""
    n = count + rng.choice((-1, 0, 0, 1))
    return n if 1 <= n <= top else None


def _statement(kind: str, left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool] | None:
    colour, shape = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
    if kind == "more":
        first, second = rng.choice((("left", "right"), ("right", "left")))
        a, b = (left, right) if first == "left" else (right, left)
        return (
            f"the {first} image has more {colour} shapes than the {second} image",
            a.count(colour=colour) > b.count(colour=colour),
        )
    if kind == "both":
        return (
            f"both images contain a {shape}",
            left.count(shape=shape) > 0 and right.count(shape=shape) > 0,
        )
    if kind == "total":
        total = left.count(shape=shape) + right.count(shape=shape)
        if (n := _near(total, rng, len(NUMBER_WORDS) - 1)) is None:
            return None
        text = (
            f"there are exactly {NUMBER_WORDS[n]} {shape}s in total"
            if n != 1
            else f"there is exactly one {shape} in total"
        )
        return text, total == n
    side = rng.choice(("left", "right"))
    count = (left if side == "left" else right).count(colour=colour)
    if (n := _near(count, rng, 3)) is None:
        return None
    return (
        f"the {side} image contains exactly {NUMBER_WORDS[n]} {colour} shapes"
        if n != 1
        else f"the {side} image contains exactly one {colour} shape",
        count == n,
    )


def statement(
    left: Scene, right: Scene, rng: random.Random, label: bool, kind: str | None = None
) -> str | None:
    """A statement of ``kind`` (default: drawn) about the pair whose truth is ``label``; None
    if none is found in 64 tries (draw another pair then, keeping kind and label, so that
    neither the kind nor a number in the text predicts the label)."""
    kind = kind or rng.choice(STATEMENT_KINDS)
    if kind not in STATEMENT_KINDS:
        raise ValueError(f"unknown statement kind {kind!r}; kinds are {STATEMENT_KINDS}")
    for _ in range(64):
        drawn = _statement(kind, left, right, rng)
        if drawn is not None and drawn[1] == label:
            return drawn[0]
    return None


@dataclass(frozen=True)
class NLVR2Example:
    """One synthetic NLVR2 example: the two scenes, the statement, its truth and its kind."""

    left: Scene
    right: Scene
    sentence: str
    label: bool
    kind: str


def nlvr2_example(rng: random.Random) -> NLVR2Example:
    """Draw the label (true half the time) and the kind first, then pairs of scenes until a
    statement of that kind has that label (:func:`statement`)."""
    label, kind = rng.random() < 0.5, rng.choice(STATEMENT_KINDS)
    while True:
        left, right = sample_scene(rng), sample_scene(rng)
        if (sentence := statement(left, right, rng, label, kind)) is not None:
            return NLVR2Example(left, right, sentence, label, kind)


def scene_captions(scene: Scene, n: int = 5) -> list[str]:
    """Up to ``n`` distinct captions of one scene (the grouped-caption retrieval split, as COCO
    and Flickr30K give each image 5): :func:`onetower.data.world.caption` for every order of
    the objects, in a fixed order. A one-object scene has one caption, two objects two, three
    objects six (the first ``n`` kept). Every caption of an image is a hit for it."""
    out: list[str] = []
    for order in itertools.permutations(scene.objects):
        text = _ordered_caption(scene, list(order))
        if text not in out:
            out.append(text)
    return out[:n]


def _ordered_caption(scene: Scene, objs: list) -> str:
    # world.caption with the shuffle replaced by a given order (same templates)
    if len(objs) == 1:
        return f"{objs[0].describe()} {where(objs[0])} on a {scene.background} background"
    a, b = objs[0], objs[1]
    text = f"{a.describe()} {relation(a, b)} {b.describe()}"
    if len(objs) == 3:
        text += f" and {objs[2].describe()} {where(objs[2])}"
    return text
