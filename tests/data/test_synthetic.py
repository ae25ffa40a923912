"""The synthetic world: determinism, standard formats, learnability and no text-only shortcut."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter, defaultdict

import datasets
import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from onetower.data import COLOURS, WorldSpec, ensure_synthetic_world, grounding_word_ids
from onetower.data.synthetic import main, nlvr2_examples, write_synthetic_world
from onetower.data.world import (
    BACKGROUNDS,
    GRID,
    SHAPES,
    Obj,
    Scene,
    caption,
    render,
    sample_scene,
)
from onetower.data.world_tasks import STATEMENT_KINDS, nlvr2_example, questions


def _rows(split_dir):
    return [json.loads(line) for line in (split_dir / "metadata.jsonl").read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = WorldSpec(
        seed=1,
        n_train=6,
        n_val=2,
        image_size=32,
        vqa_train=4,
        vqa_val=2,
        nlvr2_train=4,
        nlvr2_val=2,
    )
    a = write_synthetic_world(tmp_path / "a", spec)
    b = write_synthetic_world(tmp_path / "b", spec)
    c = write_synthetic_world(tmp_path / "c", dataclasses.replace(spec, seed=2))
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert len(files) > 20
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    assert _rows(a.split_dir("train")) != _rows(c.split_dir("train"))


def test_plain_imagefolder_load(world, cache_dir):
    ds = datasets.load_dataset("imagefolder", data_dir=str(world.pairs_dir), cache_dir=cache_dir)
    assert set(ds) == {"train", "validation"}
    assert len(ds["train"]) == world.spec.n_train and len(ds["validation"]) == world.spec.n_val
    rows = _rows(world.split_dir("train"))
    assert sorted(ds["train"]["text"]) == sorted(r["text"] for r in rows)
    img = ds["train"][0]["image"]
    assert img.mode == "RGB" and img.size == (32, 32)


def test_caption_colours_are_in_the_image(world):
    """Every colour a caption names is drawn, and no other object colour is (learnability)."""
    for row in _rows(world.split_dir("train")):
        pixels = np.asarray(Image.open(world.split_dir("train") / row["file_name"]))
        present = {name for name, rgb in COLOURS.items() if (pixels == rgb).all(-1).sum() >= 4}
        named = {w for w in row["text"].split() if w in COLOURS}
        assert named == present, (row, present)


def _luminance(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def test_shapes_are_centred_and_drawn_alike_in_every_colour():
    """Learnability: an object's silhouette depends only on its shape and size (never on its
    colour or the background), sits at its cell's centre, and every background is brighter
    than every object colour, so contrast never flips."""
    size = 48
    cell = size / GRID
    for shape in SHAPES:
        for obj_size in ("small", "large"):
            silhouettes = set()
            for colour in COLOURS:
                for background in BACKGROUNDS:
                    obj = Obj(shape, colour, obj_size, row=1, col=2)
                    scene = Scene(background, (obj,), ((0.9, 0.1, 0.5),))
                    pixels = np.asarray(render(scene, size))
                    drawn = (pixels != BACKGROUNDS[background]).any(-1)
                    ys, xs = np.nonzero(drawn)
                    assert abs((ys.min() + ys.max() + 1) / 2 - 1.5 * cell) <= 1, (shape, obj_size)
                    assert abs((xs.min() + xs.max() + 1) / 2 - 2.5 * cell) <= 1, (shape, obj_size)
                    silhouettes.add(drawn.tobytes())
            assert len(silhouettes) == 1, (shape, obj_size)
    darkest_background = min(_luminance(rgb) for rgb in BACKGROUNDS.values())
    assert all(_luminance(rgb) < darkest_background for rgb in COLOURS.values())


def test_captions_mostly_unique_and_fit_text_length(tokenizer):
    rng = random.Random(0)
    caps = [caption(sample_scene(rng), rng) for _ in range(1000)]
    assert len(set(caps)) > 0.9 * len(caps)
    lengths = [len(tokenizer(c)["input_ids"]) for c in caps]
    assert max(lengths) <= 24


def test_colour_answers_unguessable_from_question_text():
    """The best text-only predictor (majority answer per question) is at chance on colours,
    while the answers are a function of the image."""
    rng = random.Random(0)
    qas = [qa for _ in range(6000) for qa in questions(sample_scene(rng), rng)]
    colour_qas = [qa for qa in qas if qa.question_type == "what colour is the"]
    assert len(colour_qas) > 2000
    half = len(colour_qas) // 2
    by_question = defaultdict(Counter)
    for qa in colour_qas[:half]:
        by_question[qa.question][qa.multiple_choice_answer] += 1
    majority = {q: c.most_common(1)[0][0] for q, c in by_question.items()}
    test = colour_qas[half:]
    acc = np.mean([majority.get(qa.question) == qa.multiple_choice_answer for qa in test])
    chance = 1 / len(COLOURS)
    assert acc < chance + 4 * np.sqrt(chance * (1 - chance) / len(test))
    # Near uniform per question: every colour gets between half and 1.5x its fair share.
    for counts in by_question.values():
        total = sum(counts.values())
        assert set(counts) == set(COLOURS)
        assert all(0.5 < counts[c] * len(COLOURS) / total < 1.5 for c in COLOURS)


def test_vqa_answers_match_rendered_scene():
    rng = random.Random(1)
    for _ in range(50):
        scene = sample_scene(rng)
        pixels = np.asarray(render(scene, 32))
        for qa in questions(scene, rng):
            if qa.question_type == "what colour is the":
                assert (pixels == COLOURS[qa.multiple_choice_answer]).all(-1).any()
            if qa.question_type == "how many":
                shape = qa.question.split()[2][:-1]
                assert int(qa.multiple_choice_answer) == scene.count(shape=shape)


def test_tokenizer_contract(world, tokenizer):
    assert [
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.mask_token_id,
    ] == [0, 1, 2, 3, 4]
    assert len(tokenizer) <= 512 and tokenizer.model_max_length == 24
    auto = AutoTokenizer.from_pretrained(str(world.tokenizer_dir))
    groups = grounding_word_ids(auto)  # every colour and shape word is one token
    assert len(set(groups["colour"])) == len(COLOURS) and len(set(groups["shape"])) == len(SHAPES)
    enc = auto("a small red circle")["input_ids"]
    assert enc[0] == auto.cls_token_id and enc[-1] == auto.sep_token_id and len(enc) == 6


def test_ensure_reuses_and_rejects_other_spec(world):
    stamp = (world.root / "world.json").stat().st_mtime_ns
    again = ensure_synthetic_world(world.root, world.spec)
    assert again.root == world.root
    assert (world.root / "world.json").stat().st_mtime_ns == stamp
    try:
        ensure_synthetic_world(world.root, world.spec, seed=99)
    except FileExistsError:
        pass
    else:
        raise AssertionError("a different spec must not silently reuse the folder")


def test_cli_writes_world(tmp_path):
    main(
        [
            str(tmp_path / "cli"),
            "--n-train",
            "5",
            "--n-val",
            "2",
            "--image-size",
            "32",
            "--vqa-train",
            "2",
            "--vqa-val",
            "1",
            "--nlvr2-train",
            "2",
            "--nlvr2-val",
            "1",
        ]
    )
    assert len(_rows(tmp_path / "cli" / "pairs" / "train")) == 5
    assert (tmp_path / "cli" / "tokenizer" / "tokenizer.json").exists()


def test_nlvr2_statements_unguessable_from_their_text():
    """The labels of the NLVR2 statements cannot be read from the text: every kind is true
    about half the time, and the best text-only predictor (majority label per statement,
    numbers included) is near chance. World version 2 let a model score 85% on the "in total"
    statements with blank images (the false ones named numbers that no pair reaches)."""
    rng = random.Random(0)
    rows = [(ex.kind, ex.sentence, ex.label) for ex in (nlvr2_example(rng) for _ in range(4000))]
    for kind in STATEMENT_KINDS:
        labels = [label for k, _, label in rows if k == kind]
        assert len(labels) > 800 and 0.45 < np.mean(labels) < 0.55, kind
    half = len(rows) // 2
    by_text = defaultdict(Counter)
    for _, sentence, label in rows[:half]:
        by_text[sentence][label] += 1
    majority = {s: c.most_common(1)[0][0] for s, c in by_text.items()}
    test = rows[half:]
    acc = np.mean([majority.get(s, False) == label for _, s, label in test])
    assert acc < 0.5 + 4 * np.sqrt(0.25 / len(test)), acc


def test_nlvr2_examples_are_what_the_world_wrote(world):
    """``nlvr2_examples`` gives the scenes behind the written NLVR2 files (the oracle benchmark
    reads them): same statements and labels, and the scenes render to the written images."""
    spec = world.spec
    for split, name, n in (
        ("train", "train", spec.nlvr2_train),
        ("validation", "dev", spec.nlvr2_val),
    ):
        rows = [json.loads(line) for line in (world.nlvr2_dir / f"{name}.json").open()]
        examples = nlvr2_examples(world.spec.seed, split, n)
        assert [(r["sentence"], r["label"]) for r in rows] == [
            (ex.sentence, str(ex.label)) for ex in examples
        ]
        prefix = rows[-1]["identifier"].rsplit("-", 1)[0]
        for side, scene in ((0, examples[-1].left), (1, examples[-1].right)):
            written = Image.open(world.nlvr2_dir / "images" / name / f"{prefix}-img{side}.png")
            rendered = render(scene, world.spec.image_size)
            assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(rendered))
    with pytest.raises(ValueError, match="'dev'"):
        nlvr2_examples(spec.seed, "dev", 1)  # the file's name, not the world's split name
