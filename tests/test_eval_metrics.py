"""ScienceQA, VQA v2 and COCO caption metrics, checked against numbers worked out by hand."""

import math

import pytest

from semrel_jax.evaluation import captioning, scienceqa, vqa_v2

# ----------------------------------------------------------------------------------------- VQA v2


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Yes.", "yes"),
        ("a dog", "dog"),
        ("dont", "don't"),
        ("three", "3"),
        ("Two dogs!", "2 dogs"),
        ("The  Cat\n", "cat"),
        ("none", "0"),
        ("1,000", "1000"),  # comma between digits: punctuation deleted, not spaced
        ("black/white", "black white"),  # touches no space: replaced by a space
        ("yes ,no", "yes no"),  # touches a space: deleted
        ("2.5", "2.5"),  # a period before a digit stays
        ("I dont know.", "i don't know"),
    ],
)
def test_vqa_answer_normalization(raw, normalized):
    assert vqa_v2.normalize_answer(raw) == normalized


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_accuracy_averages_leave_one_out_subsets(k, expected):
    # k matching humans: the k subsets that leave out a matching human score min((k-1)/3, 1), the
    # 10-k others min(k/3, 1). k=2: (2 * 1/3 + 8 * 2/3) / 10 = 0.6; k=3: (3 * 2/3 + 7 * 1) / 10 = 0.9.
    humans = ["2"] * k + ["3"] * (10 - k)
    assert vqa_v2.soft_accuracy("2", humans) == pytest.approx(expected)


def test_vqa_two_of_ten_humans_said_two():
    # Released VQA v2 answers are already processed ("two" is stored as "2"); the prediction is normalised.
    annotation = {"question_id": 1, "answer_type": "number", "question_type": "how many"}
    annotation["answers"] = ["2"] * 2 + ["3"] * 8
    assert vqa_v2.accuracy_report({1: "two"}, [annotation])["accuracy"] == pytest.approx(0.6)
    # Raw human answers ("two"): the toolkit gives them punctuation handling only, so "2" misses them...
    raw = dict(annotation, answers=["two"] * 2 + ["three"] * 8)
    assert vqa_v2.accuracy_report({1: "2"}, [raw])["accuracy"] == 0.0
    # ...unless they are normalised as predictions are (not the official protocol; opt-in).
    assert vqa_v2.accuracy_report({1: "2"}, [raw], normalize_ground_truth=True)["accuracy"] == pytest.approx(0.6)


def test_vqa_human_answers_get_punctuation_only_when_they_disagree():
    ann = {"question_id": 7, "answer_type": "other", "question_type": "what is"}
    # Disagreeing answers: "t-shirt" -> "t shirt", which matches the normalised prediction (5 matches).
    mixed = dict(ann, answers=["t-shirt"] * 5 + ["shirt"] * 5)
    assert vqa_v2.accuracy_report({7: "T-shirt"}, [mixed])["accuracy"] == 1.0
    # Unanimous answers are compared as given, exactly as the toolkit does: "t-shirt" != "t shirt".
    unanimous = dict(ann, answers=["t-shirt"] * 10)
    assert vqa_v2.accuracy_report({7: "T-shirt"}, [unanimous])["accuracy"] == 0.0


def test_vqa_report_by_answer_type():
    annotations = {
        "annotations": [
            {"question_id": 1, "answer_type": "yes/no", "question_type": "is the", "answers": [{"answer": "yes"}] * 10},
            {"question_id": 2, "answer_type": "number", "question_type": "how many",
             "answers": [{"answer": "2"}] * 2 + [{"answer": "3"}] * 8},
            {"question_id": 3, "answer_type": "other", "question_type": "what", "answers": [{"answer": "dog"}] * 10},
            {"question_id": 4, "answer_type": "other", "question_type": "what", "answers": [{"answer": "red"}] * 10},
        ]
    }  # fmt: skip
    results = [{"question_id": q, "answer": a} for q, a in [(1, "Yes."), (2, "two"), (3, "cat")]]
    report = vqa_v2.accuracy_report(results, annotations, by_question_type=True)
    assert report["accuracy"] == pytest.approx((1 + 0.6 + 0 + 0) / 4)  # question 4 has no prediction
    assert report["accuracy/yes_no"] == 1.0
    assert report["accuracy/number"] == pytest.approx(0.6)
    assert report["accuracy/other"] == 0.0
    assert report["num_examples/other"] == 2
    assert report["num_examples"] == 4 and report["num_missing"] == 1
    assert report["accuracy/question_type/how many"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="not in the annotations"):
        vqa_v2.accuracy_report({99: "yes"}, annotations)


# --------------------------------------------------------------------------------------- ScienceQA


def _problem(subject, hint, image, grade, answer, num_choices, split="test"):
    return {
        "question": "q?", "choices": [f"choice {i}" for i in range(num_choices)], "answer": answer,
        "hint": hint, "image": image, "task": "closed choice", "grade": grade, "subject": subject,
        "topic": "t", "category": "c", "skill": "s", "lecture": "", "solution": "", "split": split,
    }  # fmt: skip


# pid: (problem, prediction, categories, correct?)
SQA = {
    "1": (_problem("natural science", "", "image.png", "grade2", 0, 2), "A", {"NAT", "IMG", "G1-6"}, True),
    "2": (_problem("social science", "Read the text.", None, "grade8", 1, 3), "The answer is B.",
          {"SOC", "TXT", "G7-12"}, True),
    "3": (_problem("language science", "Some text.", "image.png", "grade5", 2, 4), "C. choice 2",
          {"LAN", "TXT", "IMG", "G1-6"}, True),
    "4": (_problem("natural science", "", None, "grade10", 0, 2), "I think it is the first one",  # unparsed
          {"NAT", "NO", "G7-12"}, False),
    "5": (_problem("natural science", "", None, "grade3", 1, 2), "D", {"NAT", "NO", "G1-6"}, False),  # no choice D
    "6": (_problem("social science", "Context.", None, "grade12", 0, 5), None, {"SOC", "TXT", "G7-12"}, False),
}  # fmt: skip


@pytest.mark.parametrize(
    "text, letter",
    [
        ("A", "A"),
        (" B ", "B"),
        ("C\nbecause ...", "C"),  # newline -> ". ": "C. because ..."
        ("D. a rock", "D"),
        ("Lots of reasoning. The answer is E.", "E"),
        ("The answer is B", "B"),
        ("The answer is Apple", "A"),  # LLaVA's pattern has no word boundary; kept for comparability
        ("the answer is a.", None),
        ("Answer: A", None),
        ("F", None),
        ("", None),
    ],
)
def test_scienceqa_extract_letter_like_llava(text, letter):
    assert scienceqa.extract_letter(text) == letter


def test_scienceqa_categories_follow_official_definitions():
    for pid, (problem, _, cats, _) in SQA.items():
        assert set(scienceqa.categories(problem)) == cats, pid


def test_scienceqa_report_hand_computed_table():
    problems = {pid: p for pid, (p, _, _, _) in SQA.items()}
    problems["7"] = _problem("natural science", "", None, "grade1", 0, 2, split="train")
    predictions = {pid: pred for pid, (_, pred, _, _) in SQA.items() if pred is not None}
    predictions["7"] = "A"  # a train problem: outside the evaluated split
    report = scienceqa.accuracy_report(predictions, problems)
    expected = {
        "accuracy": 3 / 6,  # problems 1, 2, 3 right
        "accuracy/NAT": 1 / 3,  # 1 of {1, 4, 5}
        "accuracy/SOC": 1 / 2,  # 2 of {2, 6}
        "accuracy/LAN": 1.0,  # {3}
        "accuracy/TXT": 2 / 3,  # 2, 3 of {2, 3, 6}
        "accuracy/IMG": 1.0,  # {1, 3}
        "accuracy/NO": 0.0,  # {4, 5}
        "accuracy/G1-6": 2 / 3,  # 1, 3 of {1, 3, 5}
        "accuracy/G7-12": 1 / 3,  # 2 of {2, 4, 6}
    }
    for key, value in expected.items():
        assert report[key] == pytest.approx(value), key
    assert report["num_examples"] == 6
    assert [report[f"num_examples/{c}"] for c in scienceqa.CATEGORIES] == [3, 2, 1, 3, 2, 2, 3, 3]
    assert report["num_unparsed"] == 1  # problem 4: counted wrong, never mapped to an option
    assert report["num_invalid_option"] == 1  # problem 5
    assert report["num_missing"] == 1  # problem 6
    assert report["num_ignored_predictions"] == 1  # problem 7
    row = scienceqa.format_table_row(report).splitlines()[1].split("|")
    assert [float(v) for v in row] == [33.33, 50.0, 100.0, 66.67, 100.0, 0.0, 66.67, 33.33, 50.0]


def test_scienceqa_choice_indices_pids_and_empty_categories():
    problems = {pid: p for pid, (p, _, _, _) in SQA.items()}
    report = scienceqa.accuracy_report({"1": 0, "5": 1, "4": 7}, problems, pids=["1", "4", "5"])
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["num_invalid_option"] == 1  # index 7 of a 2-choice problem
    assert math.isnan(report["accuracy/LAN"]) and report["num_examples/LAN"] == 0
    with pytest.raises(ValueError, match="not in problems.json"):
        scienceqa.accuracy_report({"404": "A"}, problems)
    with pytest.raises(ValueError, match="No ScienceQA problems"):
        scienceqa.accuracy_report({}, problems, split="val")


# -------------------------------------------------------------------------------------- Captioning

JAVA = captioning.java_available()
JAVA_MODES = [False] + ([True] if JAVA else [])

REFERENCES = {
    1: ["A man is riding a horse.", "A person rides a brown horse on the beach."],
    2: ["A cat sitting on a mat.", "The cat is on the mat."],
    3: ["Two dogs play in the snow.", "Dogs running through deep snow."],
}
PERFECT = {k: refs[0] for k, refs in REFERENCES.items()}
SHUFFLED = {1: PERFECT[2], 2: PERFECT[3], 3: PERFECT[1]}


@pytest.fixture(scope="module", params=JAVA_MODES, ids=lambda java: "ptb_java" if java else "python_tokenizer")
def corpus_scores(request):
    use_java = request.param
    return (
        use_java,
        captioning.caption_scores(PERFECT, REFERENCES, use_java=use_java),
        captioning.caption_scores(SHUFFLED, REFERENCES, use_java=use_java),
    )


def test_python_tokenizer_mimics_ptb():
    assert captioning.python_tokenize("A man, riding a horse.") == "a man riding a horse"
    assert captioning.python_tokenize("The dog's ball isn't red!") == "the dog 's ball is n't red"
    assert captioning.python_tokenize('A black-and-white "photo" (old) of 3.5 cats...') == (
        "a black-and-white photo -lrb- old -rrb- of 3.5 cats"
    )


@pytest.mark.parametrize("use_java", JAVA_MODES)
def test_bleu_1_by_hand(use_java):
    # Clipped unigram precision: "the" counts once (at most once in any reference), "cat" once: 2/4.
    # Brevity penalty: candidate length c=4, closest reference length r=6: exp(1 - 6/4).
    report = captioning.caption_scores(
        {"img": "the the the cat"}, {"img": ["the cat sat on a mat", "a cat is on the mat"]}, use_java=use_java
    )
    assert report["bleu_1"] == pytest.approx(0.5 * math.exp(1 - 6 / 4), rel=1e-6)


def test_rouge_and_cider_sanity(corpus_scores):
    _, perfect, shuffled = corpus_scores
    assert perfect["rouge_l"] == pytest.approx(1.0)  # each caption equals one of its references
    assert shuffled["rouge_l"] < 0.5
    assert perfect["cider"] > shuffled["cider"] >= 0
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["num_images"] == 3


def test_meteor_computed_with_java_else_reported_unavailable(corpus_scores):
    use_java, perfect, shuffled = corpus_scores
    if use_java:
        assert perfect["tokenizer"] == "ptb"
        assert perfect["meteor"] == pytest.approx(1.0)
        assert 0 <= shuffled["meteor"] < perfect["meteor"]
    else:
        assert perfect["tokenizer"] == "python"
        assert "meteor" not in perfect
        assert perfect["meteor_unavailable"] == captioning.METEOR_NEEDS_JAVA


def test_meteor_autodetects_java():
    report = captioning.caption_scores({1: "a cat on a mat"}, {1: ["a cat on a mat"]})
    if JAVA:
        assert report["meteor"] == pytest.approx(1.0)
    else:
        assert report["meteor_unavailable"] == captioning.METEOR_NEEDS_JAVA


@pytest.mark.skipif(not JAVA, reason="needs java for pycocoevalcap's PTBTokenizer")
def test_python_tokenizer_scores_match_ptb_on_plain_captions():
    python_report = captioning.caption_scores(SHUFFLED, REFERENCES, use_java=False)
    ptb_report = captioning.caption_scores(SHUFFLED, REFERENCES, use_java=True)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert python_report[key] == pytest.approx(ptb_report[key]), key


def test_captions_need_references():
    with pytest.raises(ValueError, match="no reference captions"):
        captioning.caption_scores({1: "a cat"}, {2: ["a dog"]}, use_java=False)
