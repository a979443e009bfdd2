"""Entity-level precision, recall and F1 for BIO-tagged sequences (CoNLL / seqeval style).

An entity is a maximal chunk ``(type, start, end)``; a predicted entity counts only if a
gold entity has exactly the same type and span. Chunks are read like ``conlleval`` and
``seqeval``'s default (non-strict) mode: a chunk starts at ``B-X``, or at ``I-X`` that
does not continue a chunk of type ``X`` (so ``O I-PER`` is a PER entity), and ends before
the next ``B-*``, ``O`` or a tag of another type. Scores are micro-averaged over all
entities of all sentences.
"""

from __future__ import annotations

from collections.abc import Sequence

Span = tuple[str, int, int]


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not kind:
        raise ValueError(f"tag {tag!r} is not BIO; expected 'O', 'B-<TYPE>' or 'I-<TYPE>'")
    return prefix, kind


def entity_spans(tags: Sequence[str]) -> list[Span]:
    """The entities of one sentence's BIO tags as ``(type, start, end)``, ``end``
    inclusive, in order."""
    spans: list[Span] = []
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, this = _split_tag(tag)
        continues = prefix == "I" and this == kind and start >= 0
        if start >= 0 and not continues:
            spans.append((kind, start, i - 1))
            start, kind = -1, ""
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, this
    return spans


def entity_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro ``precision``, ``recall`` and ``f1`` over exact entity matches, with the
    counts ``true-entities``, ``predicted-entities`` and ``correct-entities``.
    A score whose denominator is 0 is 0 (seqeval's ``zero_division=0``)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    n_gold = n_pred = n_correct = 0
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        gold_spans, pred_spans = set(entity_spans(g)), set(entity_spans(p))
        n_gold += len(gold_spans)
        n_pred += len(pred_spans)
        n_correct += len(gold_spans & pred_spans)
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true-entities": float(n_gold),
        "predicted-entities": float(n_pred),
        "correct-entities": float(n_correct),
    }
