"""The official VQA v2 accuracy, in both versions of the official evaluation code.

Reference: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``. A prediction
scores ``mean_i min(1, #{j != i : gt_j == pred} / 3)`` over the 10 leave-one-out subsets of the
annotators; overall / per-answer-type / per-question-type accuracies are plain means of that
score, in percent. The two versions differ only in how answers are normalised:

- ``"master"`` (**the default**; the current official code, commit a013f00 "Fixed processing
  answers bug", March 2021): newlines / tabs become spaces and both sides are stripped; then,
  only when the 10 answers are not all identical, the ground-truth answers **and** the
  prediction are fully normalised (punctuation, lowercase, number words, articles,
  contractions). When all 10 are identical, neither side is touched, so 10 x "yes" against
  the prediction "Yes" scores 0.
- ``"pre2021"`` (the code before that commit, Python 3 branch; ``finetune.vqa_metric=pre2021``):
  the prediction is always fully normalised; the ground-truth answers only get the punctuation
  step, and only when they differ (checked before any stripping). They are never lowercased
  and never have articles or number words mapped, so a ground truth "a dog" matches nothing.

VQA v2 answers are stored already normalised, which is why the two rarely disagree on real
data; they do on hand-made or other data (see ``tests/finetuning/test_vqa_metric.py``, which
holds both official versions as references). :class:`VQAResult` names the variant it used.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The official contraction table, verbatim in content ("key:value", whitespace separated).
# Keys with capitals ("Im", "Ive", ...) can never match since words are lowercased first; they
# are kept so the table stays the official one. "somebody'd" -> "somebodyd" is upstream's too.
_CONTRACTIONS: dict[str, str] = dict(
    pair.split(":", 1)
    for pair in """
    aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
    couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
    hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
    howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't
    itd:it'd itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
    mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
    neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
    'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
    shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
    somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll
    somebodys:somebody's someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
    someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
    something'dve:something'd've somethingll:something'll thats:that's thered:there'd
    thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
    theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
    wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll
    whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's
    whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
    whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've
    wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll
    y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
    youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
    """.split()
)
_NUMBER_WORDS = dict(
    p.split(":")
    for p in "none:0 zero:0 one:1 two:2 three:3 four:4 five:5 six:6 seven:7 eight:8 nine:9 ten:10".split()
)
_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe, colon and period are not in the list: "isn't" keeps its apostrophe; periods have
# their own rule below. The order of marks does not matter (each decision reads the input text).
_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# Upstream writes "(?!<=\d)(\.)(?!\d)": the first group was meant as a look-behind but is a
# look-ahead that always passes at a ".", so the rule is just "a period not followed by a digit"
# ("3.5" survives, "yes." and "mr.smith" lose it). Upstream also passes re.UNICODE (== 32) where
# ``sub`` expects ``count``, so at most 32 periods are removed per answer; we keep that cap.
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32


def _strip_punctuation(text: str) -> str:
    """Upstream ``processPunctuation``: the only step also applied to ground-truth answers."""
    # Whether a mark is deleted or turned into a space is decided once per mark, on the input:
    # deleted if it touches a space somewhere ("yes, sir" -> "yes sir") or if the text has a
    # digit,digit group ("1,000" -> "1000", and then every mark is deleted); else a space, so
    # "black/white" -> "black white" instead of "blackwhite".
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCT:
        delete = has_digit_comma or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _canonical_words(text: str) -> str:
    """Upstream ``processDigitArticle``: lowercase, number words, articles, contractions."""
    words = (_NUMBER_WORDS.get(w, w) for w in text.lower().split())
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official code normalises a prediction.

    Also the right normalisation for building an answer vocabulary from training answers (as
    ViLT does), so that the classes the model predicts are already in evaluation form.

    Args:
        text: A raw answer, e.g. ``"Two dogs."``.

    Returns:
        The normalised answer, e.g. ``"2 dogs"``.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _canonical_words(_strip_punctuation(text))


#: The versions of the official evaluation code this module reproduces (see the docstring).
VARIANTS = ("master", "pre2021")


def _flatten_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def answer_accuracy(prediction: str, gt_answers: Sequence[str], variant: str = "master") -> float:
    """Official VQA accuracy of one predicted answer, in [0, 1].

    Args:
        prediction: The predicted answer, raw (it is normalised here as the variant does).
        gt_answers: The annotators' answers (10 in VQA v2), as stored in the annotations.
        variant: ``"master"`` (the current official code, default) or ``"pre2021"``.

    Returns:
        The mean over the leave-one-out subsets of ``min(1, matches / 3)``.

    Raises:
        TypeError: If ``prediction`` is not a string.
        ValueError: If there are no ground-truth answers, or the variant is unknown.
    """
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str, got {type(prediction).__name__}")
    if variant not in VARIANTS:
        raise ValueError(f"VQA metric variant must be one of {VARIANTS}, got {variant!r}")
    answers = list(gt_answers)
    if not answers:
        raise ValueError("no ground-truth answers to score against")
    if variant == "master":
        answers = [_flatten_whitespace(a) for a in answers]
        pred = _flatten_whitespace(prediction)
        if len(set(answers)) > 1:  # master: both sides normalised, only when answers differ
            answers = [_canonical_words(_strip_punctuation(a)) for a in answers]
            pred = _canonical_words(_strip_punctuation(pred))
    else:
        pred = normalize_answer(prediction)
        if len(set(answers)) > 1:  # pre-2021: identical answers are compared untouched
            answers = [_strip_punctuation(a) for a in answers]
    hits = [a == pred for a in answers]
    matches = sum(hits)
    # Subsets are by annotator position (upstream drops one answer record, not one value), so
    # dropping a matching annotator leaves ``matches - 1`` among the others.
    return sum(min(1.0, (matches - hit) / 3) for hit in hits) / len(answers)


@dataclass(frozen=True)
class VQAResult:
    """Accuracies in percent, at full precision (upstream rounds to 2 decimals; see ``as_dict``).

    Attributes:
        overall: Mean accuracy over all questions.
        per_answer_type: Mean accuracy per answer type ("yes/no", "number", "other").
        per_question_type: Mean accuracy per question type ("what color is the", ...).
        n: Number of questions scored.
        variant: Which official code's normalisation scored it (``"master"`` / ``"pre2021"``).
        per_question: Accuracy of each question id, in [0, 1] (for error analysis).
    """

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    n: int
    variant: str = "master"
    per_question: dict[int, float] = field(default_factory=dict, repr=False)

    def as_dict(self, ndigits: int | None = None) -> dict[str, float]:
        """Flat ``{"overall", "answer_type/<t>", "question_type/<t>"}`` percentages.

        Args:
            ndigits: Round like the official report (2) if given; full precision otherwise.
        """
        flat = {"overall": self.overall}
        flat |= {f"answer_type/{k}": v for k, v in sorted(self.per_answer_type.items())}
        flat |= {f"question_type/{k}": v for k, v in sorted(self.per_question_type.items())}
        return flat if ndigits is None else {k: round(v, ndigits) for k, v in flat.items()}


def _percent(scores: list[float]) -> float:
    return 100 * sum(scores) / len(scores)  # same operation order as upstream, before rounding


def _ids_preview(ids: list[int], limit: int = 10) -> str:
    more = f" ... (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more


def evaluate_vqa(
    predictions: Mapping[int, str], annotations: Iterable[Mapping], variant: str = "master"
) -> VQAResult:
    """Score predictions against VQA annotations (rows as from ``onetower.data.vqa.read_vqa``).

    Like upstream (whose ``loadRes`` asserts it), predictions must cover exactly the annotated
    questions.

    Args:
        predictions: ``question_id -> answer``.
        annotations: Rows with ``question_id``, ``answers``, ``answer_type``, ``question_type``.
        variant: ``"master"`` (the current official code, default) or ``"pre2021"``.

    Returns:
        The overall, per-answer-type and per-question-type accuracies.

    Raises:
        ValueError: On no annotations, a duplicated or answerless annotated question, or ids
            predicted but not annotated / annotated but not predicted (named in the message).
    """
    rows = list(annotations)
    if not rows:
        raise ValueError("no annotated questions to evaluate")
    ids = [int(row["question_id"]) for row in rows]
    counts = Counter(ids)
    if dup := sorted(i for i, c in counts.items() if c > 1):
        raise ValueError(f"duplicated question ids in annotations: {_ids_preview(dup)}")
    missing = sorted(counts.keys() - predictions.keys())
    extra = sorted(predictions.keys() - counts.keys())
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"no prediction for annotated question ids {_ids_preview(missing)}")
        if extra:
            problems.append(f"predictions for unannotated question ids {_ids_preview(extra)}")
        raise ValueError("; ".join(problems))
    per_question: dict[int, float] = {}
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for qid, row in zip(ids, rows, strict=True):
        if not row["answers"]:
            raise ValueError(f"question {qid} has no ground-truth answers (a test split?)")
        acc = answer_accuracy(predictions[qid], row["answers"], variant)
        per_question[qid] = acc
        by_answer_type[row["answer_type"]].append(acc)
        by_question_type[row["question_type"]].append(acc)
    return VQAResult(
        overall=_percent(list(per_question.values())),
        per_answer_type={k: _percent(v) for k, v in by_answer_type.items()},
        per_question_type={k: _percent(v) for k, v in by_question_type.items()},
        n=len(per_question),
        variant=variant,
        per_question=per_question,
    )


def write_results(path: str | Path, predictions: Mapping[int, str]) -> Path:
    """Write predictions in the official results format, atomically.

    The format is a JSON list of ``{"question_id": int, "answer": str}`` (what the evaluation
    server takes for test-dev / test-std). A crash mid-write leaves any previous file intact.

    Args:
        path: Destination file; parent folders are created.
        predictions: ``question_id -> answer``.

    Returns:
        The path written.
    """
    path = Path(path)
    rows = []
    for qid, answer in sorted(predictions.items()):
        if not isinstance(answer, str):
            raise TypeError(f"answer for question {qid} must be a str, got {type(answer)}")
        rows.append({"question_id": int(qid), "answer": answer})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        os.replace(tmp, path)  # atomic on one filesystem, hence the temp file beside the target
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_results(path: str | Path) -> dict[int, str]:
    """Read an official-format results file back into ``question_id -> answer``."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    results = {int(r["question_id"]): r["answer"] for r in rows}
    if len(results) != len(rows):
        raise ValueError(f"{path}: duplicated question ids")
    return results
