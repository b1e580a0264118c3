"""The demo task: well-formed sentences from a small grammar (label 1) vs the same kind of
sentence with its words shuffled (label 0). Word order is the only signal, and it needs no
download, so the README's search runs offline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from infoprompt.tasks import RawData

__all__ = ["load_demo"]

_DEMO_VERSION = "demo:v1"  # bump when the generator changes: it is the cache key
_DEMO_SEED = 20240517
_DEMO_TRAIN_PER_CLASS = 1000
_DEMO_TEST_PER_CLASS = 250

_DETS = ("the", "a", "this", "that", "every", "one", "my", "her", "his", "our")
_ADJS = ("old", "young", "heavy", "small", "red", "quiet", "tired", "happy", "wooden",
         "bright", "tall", "dusty", "new", "empty", "ancient", "clever", "broken", "warm")
_AGENTS = ("farmer", "teacher", "child", "doctor", "sailor", "girl", "boy", "woman", "man",
           "artist", "baker", "soldier", "student", "king", "queen", "neighbour", "engineer")
_VERBS = ("carried", "painted", "found", "lifted", "sold", "bought", "washed", "opened",
          "dropped", "watched", "pushed", "pulled", "cleaned", "fixed", "hid", "borrowed")
_OBJECTS = ("basket", "box", "chair", "letter", "book", "door", "window", "table", "wagon",
            "bottle", "lamp", "rope", "coat", "umbrella", "apple", "drum", "kettle")
_PREPS = ("to", "near", "in", "across", "into", "behind", "along", "under", "beside")
_PLACES = ("market", "river", "garden", "bridge", "house", "barn", "road", "forest", "school",
           "harbour", "kitchen", "hill", "office", "station")


def _noun_phrase(rng: np.random.Generator, nouns: tuple[str, ...]) -> list[str]:
    det = _DETS[rng.integers(len(_DETS))]
    words = [_ADJS[rng.integers(len(_ADJS))]] if rng.random() < 0.6 else []
    words.append(nouns[rng.integers(len(nouns))])
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return [det, *words]


def _demo_sentence(rng: np.random.Generator) -> list[str]:
    words = [*_noun_phrase(rng, _AGENTS), _VERBS[rng.integers(len(_VERBS))],
             *_noun_phrase(rng, _OBJECTS)]
    for _ in range(rng.integers(1, 3)):  # one or two prepositional phrases
        words += [_PREPS[rng.integers(len(_PREPS))], *_noun_phrase(rng, _PLACES)]
    return [*words, "."]


def load_demo() -> RawData:
    rng = np.random.default_rng(_DEMO_SEED)
    n = _DEMO_TRAIN_PER_CLASS + _DEMO_TEST_PER_CLASS
    seen: set[str] = set()
    good: list[str] = []
    bad: list[str] = []
    # Corrupted rows shuffle *other* sentences than the well-formed ones, so no pair of rows
    # shares its words; the full shuffle (the "." included) makes the corruption obvious.
    while len(bad) < n:
        words = _demo_sentence(rng)
        text = " ".join(words)
        if text in seen:
            continue
        if len(good) < n:
            seen.add(text)
            good.append(text)
            continue
        shuffled = text
        while shuffled == text:
            shuffled = " ".join(words[i] for i in rng.permutation(len(words)))
        if shuffled not in seen:
            seen.update((text, shuffled))
            bad.append(shuffled)

    def split(lo: int, hi: int) -> pa.Table:
        texts = bad[lo:hi] + good[lo:hi]
        labels = [0] * (hi - lo) + [1] * (hi - lo)
        order = rng.permutation(len(texts))
        return pa.table({"sentence": pa.array([texts[i] for i in order], pa.string()),
                         "label": pa.array([labels[i] for i in order], pa.int64())})

    train = split(0, _DEMO_TRAIN_PER_CLASS)
    test = split(_DEMO_TRAIN_PER_CLASS, n)
    return RawData(train, test, _DEMO_VERSION, _DEMO_VERSION)
