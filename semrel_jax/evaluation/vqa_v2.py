"""VQA v2 accuracy as the official VQA evaluation toolkit defines it.

Reference: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (Python 3 version),
reimplemented here from its definition:

* The predicted answer has newlines and tabs turned into spaces, is stripped, then goes through
  ``process_punctuation`` and ``process_digit_article`` (together: ``normalize_answer``):

  - each of ``PUNCTUATION`` is deleted when it touches a space in the text ("yes ," -> "yes") or
    when the text has a comma between digits ("1,000" -> "1000"), and replaced by a space otherwise
    ("black/white" -> "black white");
  - a period not followed by a digit is deleted ("yes." -> "yes", but "2.5" stays);
  - the text is lower-cased and split on whitespace; number words zero..ten (and "none") become
    digits; the articles a / an / the are dropped; apostrophe-less contractions are restored
    ("dont" -> "don't", table ``CONTRACTIONS``).

* The 10 human answers are compared as the toolkit does: when they are not all identical, each goes
  through ``process_punctuation`` only (no lower-casing, no digit or article handling: the released
  VQA v2 annotations already hold processed answers such as "2" and "yes"). Pass
  ``normalize_ground_truth=True`` to give them the full ``normalize_answer`` as well, for answer sets
  that were never processed (raw "Two" from a new annotation effort); that is not the official protocol.

* Accuracy of one question: for each of the 10 leave-one-out subsets of 9 human answers,
  ``min(#answers in the subset equal to the prediction / 3, 1)``, averaged over the 10 subsets. With
  k matching humans that is 1 when k >= 4, and (k * min((k-1)/3, 1) + (10-k) * min(k/3, 1)) / 10
  otherwise (k=1: 0.3, k=2: 0.6, k=3: 0.9).

* Overall accuracy is the mean over questions; per answer type ("yes/no", "number", "other") the mean
  over that type's questions (the official code's newer version, which averages the per-question
  subset mean; an older revision appended only the last subset's score to the per-type lists).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping

# Deleted or replaced by a space (see the module docstring); the official list of the Python 3 toolkit.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES = frozenset({"a", "an", "the"})

# The toolkit's contraction table, as "written restored" pairs. It is applied to lower-cased words, so
# the capitalised keys (Im, Ive, Id've, I'dve) never fire; "somebody'd" -> "somebodyd" is reversed in
# the original too. Both are kept so scores match the official ones.
_CONTRACTION_PAIRS = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't  couldn'tve couldn't've
couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't  hadnt hadn't  hadnt've hadn't've
hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd  hed've he'd've  he'dve he'd've  hes he's
howd how'd  howll how'll  hows how's  Id've I'd've  I'dve I'd've  Im I'm  Ive I've  isnt isn't
itd it'd  itd've it'd've  it'dve it'd've  itll it'll  let's let's  maam ma'am  mightnt mightn't
mightnt've mightn't've  mightn'tve mightn't've  mightve might've  mustnt mustn't  mustve must've
neednt needn't  notve not've  oclock o'clock  oughtnt oughtn't  ow's'at 'ow's'at  'ows'at 'ow's'at
'ow'sat 'ow's'at  shant shan't  shed've she'd've  she'dve she'd've  she's she's  shouldve should've
shouldnt shouldn't  shouldnt've shouldn't've  shouldn'tve shouldn't've  somebody'd somebodyd
somebodyd've somebody'd've  somebody'dve somebody'd've  somebodyll somebody'll  somebodys somebody's
someoned someone'd  someoned've someone'd've  someone'dve someone'd've  someonell someone'll
someones someone's  somethingd something'd  somethingd've something'd've  something'dve something'd've
somethingll something'll  thats that's  thered there'd  thered've there'd've  there'dve there'd've
therere there're  theres there's  theyd they'd  theyd've they'd've  they'dve they'd've  theyll they'll
theyre they're  theyve they've  twas 'twas  wasnt wasn't  wed've we'd've  we'dve we'd've  weve we've
werent weren't  whatll what'll  whatre what're  whats what's  whatve what've  whens when's
whered where'd  wheres where's  whereve where've  whod who'd  whod've who'd've  who'dve who'd've
wholl who'll  whos who's  whove who've  whyll why'll  whyre why're  whys why's  wont won't
wouldve would've  wouldnt wouldn't  wouldnt've wouldn't've  wouldn'tve wouldn't've  yall y'all
yall'll y'all'll  y'allll y'all'll  yall'd've y'all'd've  y'alld've y'all'd've  y'all'dve y'all'd've
youd you'd  youd've you'd've  you'dve you'd've  youll you'll  youre you're  youve you've
"""
_words = _CONTRACTION_PAIRS.split()
CONTRACTIONS = dict(zip(_words[::2], _words[1::2]))
del _words

_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The toolkit writes "(?!<=\d)(\.)(?!\d)"; its first group is a lookahead that can never fail at a
# period, so the rule is: a period not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")
# The toolkit passes re.UNICODE (= 32) where re.sub takes `count`: at most 32 periods are deleted.
_PERIOD_COUNT = 32


def process_punctuation(text: str) -> str:
    """The toolkit's punctuation step (applied to predictions and, when they differ, to human answers)."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in PUNCTUATION:
        # The test looks at the input text, not at the partly processed one, as the toolkit does.
        touches_space = (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if delete_all or touches_space else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The full normalisation the toolkit gives a predicted answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def soft_accuracy(normalized_prediction: str, human_answers: list[str]) -> float:
    """Mean over leave-one-out subsets of min(#matching answers / 3, 1); inputs already normalised.

    The subsets leave out one answer POSITION (the toolkit removes the answer dict, whose answer_id
    makes it unique), so duplicate answers are handled per annotator. As in the toolkit, a question
    with a single human answer always scores 0 (no other answer is left to match); VQA v2 has 10.
    """
    if not human_answers:
        raise ValueError("A VQA question needs at least one human answer.")
    matches = [a == normalized_prediction for a in human_answers]
    total = sum(matches)
    scores = [min((total - m) / 3, 1.0) for m in matches]
    return sum(scores) / len(scores)


def _answers_of(annotation: Mapping) -> list[str]:
    return [a["answer"] if isinstance(a, Mapping) else a for a in annotation["answers"]]


def _human_answers(raw: list[str], normalize_ground_truth: bool) -> list[str]:
    if normalize_ground_truth:
        return [normalize_answer(a) for a in raw]
    if len(set(raw)) > 1:
        return [process_punctuation(a) for a in raw]
    return list(raw)


def _type_key(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def accuracy_report(
    predictions: Mapping | Iterable[Mapping],
    annotations: Mapping | Iterable[Mapping],
    *,
    normalize_ground_truth: bool = False,
    by_question_type: bool = False,
) -> dict[str, float]:
    """VQA v2 accuracy of ``predictions`` against the official annotations.

    predictions: question_id -> answer text, or the official results list
    ``[{"question_id": ..., "answer": ...}]``. annotations: the official annotation file's dict (with an
    "annotations" list) or that list; each entry has ``question_id``, ``answers`` (dicts with "answer",
    or plain strings), ``answer_type`` and ``question_type``. Question ids are matched as strings.

    Every annotated question is scored; one without a prediction scores 0 and is counted in
    ``num_missing``. A prediction for a question id not in the annotations is an error.

    Returns fractions in [0, 1]: ``accuracy``, ``accuracy/<answer type>`` with "/" and spaces made "_"
    (``accuracy/yes_no``, ``accuracy/number``, ``accuracy/other``), ``num_examples``,
    ``num_examples/<answer type>``, ``num_missing``, and with ``by_question_type`` also
    ``accuracy/question_type/<question type>``.
    """
    if isinstance(annotations, Mapping):
        annotations = annotations["annotations"]
    annotations = list(annotations)
    if isinstance(predictions, Mapping):
        answers = {str(k): v for k, v in predictions.items()}
    else:
        answers = {str(r["question_id"]): r["answer"] for r in predictions}
    if not annotations:
        raise ValueError("No VQA annotations to evaluate.")
    annotated = {str(a["question_id"]) for a in annotations}
    unknown = [qid for qid in answers if qid not in annotated]
    if unknown:
        raise ValueError(f"{len(unknown)} predictions for question ids not in the annotations, e.g. {unknown[:3]}")

    scores: list[float] = []
    by_answer_type: dict[str, list[float]] = collections.defaultdict(list)
    by_qtype: dict[str, list[float]] = collections.defaultdict(list)
    num_missing = 0
    for ann in annotations:
        prediction = answers.get(str(ann["question_id"]))
        if prediction is None:
            num_missing += 1
            score = 0.0
        else:
            humans = _human_answers(_answers_of(ann), normalize_ground_truth)
            score = soft_accuracy(normalize_answer(prediction), humans)
        scores.append(score)
        by_answer_type[_type_key(ann["answer_type"])].append(score)
        if by_question_type:
            by_qtype[ann["question_type"]].append(score)

    report: dict[str, float] = {
        "accuracy": sum(scores) / len(scores),
        "num_examples": float(len(scores)),
        "num_missing": float(num_missing),
    }
    for name, group in sorted(by_answer_type.items()):
        report[f"accuracy/{name}"] = sum(group) / len(group)
        report[f"num_examples/{name}"] = float(len(group))
    for name, group in sorted(by_qtype.items()):
        report[f"accuracy/question_type/{name}"] = sum(group) / len(group)
    return report
