"""Answer normalisation and exact-match scoring for 3D question answering (ScanQA / SQA3D style),
and `<OBJ###>` object references in answers.

Normalisation: lower case, punctuation to spaces (the decimal point kept), common misspellings
fixed, digits 0-10 spelled out, articles dropped, whitespace collapsed. EM: the normalised answer
equals a normalised reference. Refined EM: one contains the other once all whitespace is removed.
"""

from __future__ import annotations

import re

NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
           "8": "eight", "9": "nine", "10": "ten"}
ARTICLES = {"a", "an", "the"}
SPELLING = {"color": "colour", "gray": "grey", "tv": "television", "tvs": "televisions", "couch": "sofa",
            "lightswitch": "light switch", "cabinate": "cabinet", "tolet": "toilet", "shelve": "shelf",
            "doorknob": "door knob", "dont": "don't", "cant": "can't"}
OBJ_TOKEN = re.compile(r"<OBJ(\d{3})>")


def clean_answer(text: str) -> str:
    s = str(text).lower()
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)  # a full stop, not a decimal point
    s = re.sub(r"[^\w\s.'<>]", " ", s)
    words = []
    for w in s.split():
        w = SPELLING.get(w, w)
        w = NUMBERS.get(w, w)
        if w not in ARTICLES:
            words.append(w)
    return " ".join(" ".join(words).split())


def exact_match(answer: str, references) -> bool:
    a = clean_answer(answer)
    return any(a == clean_answer(r) for r in references)


def refined_match(answer: str, references) -> bool:
    a = "".join(clean_answer(answer).split())
    for r in references:
        r = "".join(clean_answer(r).split())
        if a == r or (a and r and (a in r or r in a)):
            return True
    return False


def object_refs(text: str) -> list[int]:
    """Object ids named as `<OBJ###>` in order of appearance (repeats dropped)."""
    return list(dict.fromkeys(int(m) for m in OBJ_TOKEN.findall(str(text))))
