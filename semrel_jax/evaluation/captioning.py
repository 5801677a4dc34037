"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) through ``pycocoevalcap``.

The scorers are pycocoevalcap's own (``Bleu(4)`` with the "closest" reference length, ``Meteor``,
``Rouge``, ``Cider`` = CIDEr-D as reported on the COCO leaderboard), fed the way its ``COCOEvalCap``
feeds them: every caption is tokenised first. Two parts of pycocoevalcap run Java:

* ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 jar): lower-cases, tokenises, drops punctuation tokens;
* ``Meteor`` (meteor-1.5.jar).

With ``java`` on PATH (or ``use_java=True``) both are used and the numbers are the official ones.
Without Java (or ``use_java=False``) captions are tokenised by ``python_tokenize``, a pure-Python
approximation of the PTB tokeniser (lower-case; split off clitics such as "n't" and "'s"; letters,
digits and word-internal hyphens / periods / apostrophes stay together; every other symbol is its own
token; brackets become "-lrb-" etc.; the tokens PTBTokenizer drops, i.e. ``. , ? ! : ; - -- ...`` and
quotes, are dropped; abbreviations such as "e.g." lose their final period). BLEU, ROUGE-L and CIDEr
are then close to, but not guaranteed identical with, the official numbers, and the report says
``"tokenizer": "python"``. METEOR is not computed: the report carries ``"meteor_unavailable"`` with the
reason instead of a ``"meteor"`` number (never a silent 0). The same happens, with the Java error, when
Java is there but METEOR fails to run (e.g. it cannot get its 2 GB heap).

CIDEr-D's document frequencies come from the references being scored, so score the whole test split
at once (over a single image CIDEr is always 0). PTBTokenizer writes a temporary file next to its jar
inside the installed package, so that directory must be writable on the Java path.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Hashable, Mapping, Sequence

METEOR_NEEDS_JAVA = "METEOR needs Java (pycocoevalcap runs meteor-1.5.jar); install a JRE"

# Tokens pycocoevalcap's PTBTokenizer removes after tokenising (its PUNCTUATIONS list), plus '"', which
# the Java tokeniser first turns into `` or ''. Its list has "-LRB-" etc. in upper case while the tokens
# come out lower-cased, so brackets survive as "-lrb-" ... in the official scores; _BRACKETS mimics that.
_DROPPED = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITIC = re.compile(r"(?<=[^\W_])(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"[^\W_]+(?:[-.'][^\W_]+)*|\.\.\.|--|\S")


def java_available() -> bool:
    return shutil.which("java") is not None


def python_tokenize(caption: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's PTBTokenizer (see the module docstring)."""
    text = _CLITIC.sub(r" \1", caption.lower().replace("\n", " "))
    tokens = []
    for word in text.split():
        if word in ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m"):
            tokens.append(word)
        else:
            tokens.extend(_BRACKETS.get(t, t) for t in _TOKEN.findall(word) if t not in _DROPPED)
    return " ".join(tokens)


def _ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in captions.items()})
    if any(len(tokenized.get(k, ())) != len(caps) for k, caps in captions.items()):
        raise RuntimeError(
            "pycocoevalcap's PTBTokenizer (Java) returned fewer captions than it was given; "
            "pass use_java=False to tokenise in Python (METEOR is then reported as unavailable)."
        )
    return tokenized


# One meteor-1.5.jar process per Python process, started on first use and reused: starting it (a JVM with a
# 2 GB heap that loads its paraphrase tables) costs ~15 CPU-seconds, scoring a few thousand captions far less.
# Each compute_score is one self-contained request (the corpus score comes from that request's statistics
# only), so reuse changes no number.
_meteor_scorer = None


def _meteor(gts: dict, res: dict) -> float:
    global _meteor_scorer
    from pycocoevalcap.meteor.meteor import Meteor

    if _meteor_scorer is None or _meteor_scorer.meteor_p.poll() is not None:
        _meteor_scorer = Meteor()
    scorer = _meteor_scorer
    try:
        score, _ = scorer.compute_score(gts, res)
    except Exception:
        # compute_score holds the scorer's lock when the jar dies mid-way; Meteor.__del__ would then
        # block on it forever. Kill the process and free the lock before the error propagates.
        _meteor_scorer = None
        scorer.meteor_p.kill()
        if scorer.lock.locked():
            scorer.lock.release()
        stderr = scorer.meteor_p.stderr.read().decode(errors="replace").strip()
        raise RuntimeError(stderr.splitlines()[-1] if stderr else "meteor-1.5.jar produced no score") from None
    return float(score)


def caption_scores(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    use_java: bool | None = None,
) -> dict[str, float | str]:
    """Corpus-level COCO caption metrics of one predicted caption per image against its references.

    predictions: image id -> generated caption. references: image id -> reference captions (COCO has
    ~5). As in COCOEvalCap, the images scored are the predicted ones; each must have references. Note
    that CIDEr's document frequencies come from the scored references, so CIDEr over a single image
    is always 0.

    use_java: None detects ``java`` on PATH; False forces the pure-Python path (no METEOR).

    Returns ``bleu_1``..``bleu_4``, ``rouge_l``, ``cider``, ``meteor`` (or ``meteor_unavailable``, a
    message), ``num_images``, ``num_references_without_prediction``, and ``tokenizer`` ("ptb" when
    pycocoevalcap's Java tokeniser was used, "python" otherwise).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not predictions:
        raise ValueError("No captions to evaluate.")
    no_refs = [k for k in predictions if not references.get(k)]
    if no_refs:
        raise ValueError(f"{len(no_refs)} predicted images have no reference captions, e.g. {no_refs[:3]}")
    if use_java is None:
        use_java = java_available()

    ids = list(predictions)
    refs = {k: list(references[k]) for k in ids}
    preds = {k: [predictions[k]] for k in ids}
    if use_java:
        gts, res = _ptb_tokenize(refs), _ptb_tokenize(preds)
    else:
        gts = {k: [python_tokenize(c) for c in caps] for k, caps in refs.items()}
        res = {k: [python_tokenize(c) for c in caps] for k, caps in preds.items()}

    report: dict[str, float | str] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        report[f"bleu_{n}"] = float(value)
    if use_java:
        try:
            report["meteor"] = _meteor(gts, res)
        except Exception as e:  # noqa: BLE001 - any failure of the jar is reported, not raised
            report["meteor_unavailable"] = f"METEOR failed to run meteor-1.5.jar: {e}"
    else:
        report["meteor_unavailable"] = METEOR_NEEDS_JAVA
    report["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    report["cider"] = float(Cider().compute_score(gts, res)[0])
    report["num_images"] = float(len(ids))
    report["num_references_without_prediction"] = float(sum(k not in predictions for k in references))
    report["tokenizer"] = "ptb" if use_java else "python"
    return report
