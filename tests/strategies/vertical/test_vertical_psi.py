"""ECDH (X25519) private set intersection: correctness with partial overlaps, what
travels, and malformed input."""

import numpy as np
import pytest

from strategies.vertical.psi import (
    PSIError,
    PSIKey,
    align,
    hash_to_u,
    label_match,
    label_round1,
    party_respond,
    private_intersection,
)


def _ids(prefix, idx):
    return [f"{prefix}-{i:05d}" for i in idx]


def test_exponentiation_commutes_and_keys_round_trip():
    a, b = PSIKey(), PSIKey()
    ids = _ids("c", range(50))
    ab = b.reblind(a.blind(ids))
    ba = a.reblind(b.blind(ids))
    assert np.array_equal(ab, ba)
    assert len({row.tobytes() for row in ab}) == 50  # distinct ids stay distinct
    assert np.array_equal(PSIKey.from_bytes(a.to_bytes()).blind(ids), a.blind(ids))
    # Blinded values do not reveal the hash of the id, and differ between keys.
    assert not np.array_equal(a.blind(ids), b.blind(ids))
    hashes = {hash_to_u(i) for i in ids}
    assert not hashes & {row.tobytes() for row in a.blind(ids)}


def test_three_parties_with_partial_overlap_find_exactly_the_common_ids():
    rng = np.random.default_rng(3)
    universe = np.arange(800)
    label = _ids("cust", universe[rng.random(800) < 0.8])
    p1 = _ids("cust", universe[rng.random(800) < 0.7]) + _ids("only-p1", range(40))
    p2 = _ids("cust", universe[rng.random(800) < 0.9]) + _ids("only-p2", range(40))
    expected = set(label) & set(p1) & set(p2)
    assert 0 < len(expected) < min(len(label), len(p1), len(p2))

    label_view, (v1, v2) = private_intersection(label, [p1, p2], seed=7)
    assert set(label_view) == expected and len(label_view) == len(expected)
    # Every party resolves aligned index k to the same record as the label party.
    assert v1 == label_view and v2 == label_view
    # The aligned order is seeded (same seed, same order), not the label party's row order.
    again, _ = private_intersection(label, [p1, p2], seed=7)
    assert again == label_view
    assert label_view != sorted(label_view)


def test_messages_carry_only_blinded_points_and_the_party_learns_only_its_aligned_rows():
    label_ids = _ids("c", range(0, 100))
    party_ids = _ids("c", range(60, 160))  # 40 in common
    key = PSIKey()
    sent, label_order = label_round1(label_ids, key)
    assert sent.shape == (100, 32) and sent.dtype == np.uint8
    raw = {i.encode() for i in label_ids} | {hash_to_u(i) for i in label_ids}
    assert not raw & {row.tobytes() for row in sent}

    party_key = PSIKey()
    double, points, party_order = party_respond(sent, party_ids, party_key)
    match = label_match(double, label_order, points, key)
    assert {label_ids[r] for r in match} == set(_ids("c", range(60, 100)))
    rows, (positions,) = align([match], seed=1)
    # What the party is told: positions in its own shuffled list, all of them common ids.
    told = [party_ids[party_order[j]] for j in positions]
    assert set(told) == set(_ids("c", range(60, 100)))
    assert told == [label_ids[r] for r in rows]


def test_disjoint_ids_give_an_empty_intersection():
    label_view, views = private_intersection(_ids("a", range(30)), [_ids("b", range(30))])
    assert label_view == [] and views == [[]]


def test_malformed_points_are_rejected():
    key = PSIKey()
    with pytest.raises(PSIError, match=r"expected an \(n × 32\) uint8 array"):
        key.reblind(np.zeros((3, 16), dtype=np.uint8))
    sent, order = label_round1(_ids("a", range(5)), key)
    double, points, _ = party_respond(sent, _ids("a", range(5)), PSIKey())
    with pytest.raises(PSIError, match="re-blinded 4 points but 5 were sent"):
        label_match(double[:4], order, points, key)


def test_an_honest_but_curious_party_cannot_test_guessed_ids_against_the_others_transcript():
    """Adversary: either PSI party after an honest run, holding its own secret scalar,
    everything it received and a dictionary that contains the other party's ids outside
    the intersection. Offline, it blinds each guess with its own key and looks for it in
    the transcript. Without the other party's scalar no guess matches, so it learns
    nothing beyond the intersection."""
    label_ids = _ids("c", range(0, 60))
    party_ids = _ids("c", range(40, 100))  # common: 40..59
    common = set(_ids("c", range(40, 60)))
    dictionary = _ids("c", range(0, 120))  # covers every id of both parties, and more
    label_key, party_key = PSIKey(), PSIKey()
    sent, label_order = label_round1(label_ids, label_key)
    double, points, _ = party_respond(sent, party_ids, party_key)
    assert {label_ids[r] for r in label_match(double, label_order, points, label_key)} == common

    # The label party sees `double` (its ids under both scalars) and `points` (the
    # party's ids under the party's scalar only).
    seen_by_label = {row.tobytes() for row in points} | {row.tobytes() for row in double}
    guesses = label_key.blind(dictionary)
    hits = [g for g, row in zip(dictionary, guesses, strict=True) if row.tobytes() in seen_by_label]
    assert hits == []
    twice = label_key.reblind(label_key.blind(dictionary))  # a^2 does not reach ab either
    assert not {row.tobytes() for row in twice} & seen_by_label

    # The feature party sees `sent` (the label party's ids under the label scalar only).
    seen_by_party = {row.tobytes() for row in sent}
    assert not {row.tobytes() for row in party_key.blind(dictionary)} & seen_by_party
    # Sanity: the attack is meaningful — with the other party's scalar it would succeed.
    stolen = {g for g, row in zip(dictionary, label_key.blind(dictionary), strict=True)
              if row.tobytes() in seen_by_party}  # fmt: skip
    assert stolen == set(label_ids)
