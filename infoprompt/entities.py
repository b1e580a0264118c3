"""Entity markers: how a relation's two entities are shown to the frozen encoder.

`@ e1 @` and `# e2 #` (the punctuation markers of Zhou & Chen, 2022, "An Improved Baseline
for Sentence-level Relation Extraction"): `@` and `#` are single tokens of every BERT and
RoBERTa vocabulary, so the markers need no new embeddings, which a frozen encoder could not
learn, and cost four tokens. Which symbol surrounds an entity tells e1 from e2, so the
direction of a relation stays visible.
"""

from __future__ import annotations

__all__ = ["MARKERS", "check_span", "mark_entities"]

MARKERS = {"e1": ("@", "@"), "e2": ("#", "#")}


def check_span(span: tuple[int, int], text: str, name: str) -> str | None:
    """Why `span` ([start, end) character offsets) is not a span of `text`, or None."""
    start, end = span
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool):
        return f"{name} span {list(span)} is not two integer character offsets"
    if not 0 <= start < end <= len(text):
        return (f"{name} span [{start}, {end}) lies outside its {len(text)}-character text "
                "(offsets count characters from 0, the end is exclusive)")
    return None


def mark_entities(text: str, e1: tuple[int, int], e2: tuple[int, int]) -> str:
    """`text` with `@ … @` around e1 and `# … #` around e2 (spans do not overlap)."""
    # (position, 0 for an end and 1 for a start, marker): where one entity ends and the
    # other starts at the same offset, the end's marker comes first.
    inserts = [(e1[0], 1, MARKERS["e1"][0] + " "), (e1[1], 0, " " + MARKERS["e1"][1]),
               (e2[0], 1, MARKERS["e2"][0] + " "), (e2[1], 0, " " + MARKERS["e2"][1])]
    out, last = [], 0
    for position, _, marker in sorted(inserts):
        out += [text[last:position], marker]
        last = position
    return "".join(out + [text[last:]])
