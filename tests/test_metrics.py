"""Tests for cmhash.metrics against plain-Python references and hand-computed cases."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from cmhash import metrics as M

# ======================================================================================
# slow, obviously-correct references (plain Python loops)
# ======================================================================================


def ref_distance(a, b):
    return sum(1 for x, y in zip(a, b) if x != y)


def ref_relevant(la, lb):
    return sum(float(x) * float(y) for x, y in zip(la, lb)) > 0


def ref_tables(q, d, lq, ld):
    """Python lists: dist[i][j], rel[i][j]."""
    dist = [[ref_distance(q[i], d[j]) for j in range(len(d))] for i in range(len(q))]
    rel = [[ref_relevant(lq[i], ld[j]) for j in range(len(d))] for i in range(len(q))]
    return dist, rel


def ref_rank(dists, tie_key):
    """Indices sorted by (distance, tie_key[j]); tie_key = j gives the stable order."""
    return sorted(range(len(dists)), key=lambda j: (dists[j], tie_key[j]))


def ref_ap(rel_sorted, top_k=None, denominator="hits", total_relevant=None):
    """AP from its definition. Returns (ap, hits_in_list)."""
    lst = rel_sorted if top_k is None else rel_sorted[:top_k]
    hits = 0
    s = 0.0
    for k, r in enumerate(lst, start=1):
        if r:
            hits += 1
            s += hits / k
    if top_k is None or denominator == "hits":
        den = hits
    else:
        den = min(top_k, total_relevant)
    return (s / den if den > 0 else 0.0), hits


def ref_tie_orders(dists):
    """All tie orders: yields tie_key lists, one per permutation of every tie group."""
    groups = {}
    for j, dj in enumerate(dists):
        groups.setdefault(dj, []).append(j)
    keys = sorted(groups)
    perms = [list(itertools.permutations(groups[k])) for k in keys]
    for combo in itertools.product(*perms):
        tie_key = [0] * len(dists)
        for members in combo:
            for pos, j in enumerate(members):
                tie_key[j] = pos
        yield tie_key


def ref_relevance_patterns(dists, rel):
    """All distinct relevance sequences of the ranking under random tie orders, each with
    its probability (for every tie group, each placement of its relevant items among its
    positions is equally likely: C(n_g, r_g) patterns)."""
    groups = {}
    for j, dj in enumerate(dists):
        groups.setdefault(dj, []).append(rel[j])
    per_group = []
    for k in sorted(groups):
        g = groups[k]
        n_g, r_g = len(g), sum(g)
        pats = []
        for pos in itertools.combinations(range(n_g), r_g):
            pats.append([i in pos for i in range(n_g)])
        per_group.append(pats)
    total = 1
    for pats in per_group:
        total *= len(pats)
    for combo in itertools.product(*per_group):
        seq = []
        for pat in combo:
            seq.extend(pat)
        yield seq, 1.0 / total


def ref_ap_per_query(q, d, lq, ld, *, top_k=None, ties="stable", denominator="hits",
                     zero_relevant="zero", tie_keys=None):
    """Reference AP vector. ties="stable" | "expected"; or explicit tie_keys per query."""
    dist, rel = ref_tables(q, d, lq, ld)
    out = []
    for i in range(len(q)):
        total = sum(rel[i])
        if ties == "expected":
            ev = 0.0
            can_hit = False
            for seq, pr in ref_relevance_patterns(dist[i], rel[i]):
                ap, hits = ref_ap(seq, top_k, denominator, total)
                ev += pr * ap
                can_hit = can_hit or hits > 0
            ap, hits = ev, int(can_hit)
        else:
            key = list(range(len(d))) if tie_keys is None else tie_keys[i]
            order = ref_rank(dist[i], key)
            ap, hits = ref_ap([rel[i][j] for j in order], top_k, denominator, total)
        if hits == 0:
            ap = 0.0 if zero_relevant == "zero" else float("nan")
        out.append(ap)
    return np.array(out)


def ref_map(*args, **kw):
    ap = ref_ap_per_query(*args, **kw)
    return float(np.nanmean(ap))


def ref_precision_at_k(q, d, lq, ld, ks, *, ties="stable", tie_keys=None):
    dist, rel = ref_tables(q, d, lq, ld)
    res = []
    for k in ks:
        acc = 0.0
        for i in range(len(q)):
            if ties == "expected":
                acc += sum(pr * sum(seq[:k]) / k
                           for seq, pr in ref_relevance_patterns(dist[i], rel[i]))
            else:
                key = list(range(len(d))) if tie_keys is None else tie_keys[i]
                order = ref_rank(dist[i], key)
                acc += sum(rel[i][j] for j in order[:k]) / k
        res.append(acc / len(q))
    return np.array(res)


def ref_pr_ranking(q, d, lq, ld, grid, *, zero_relevant="zero", tie_keys=None):
    dist, rel = ref_tables(q, d, lq, ld)
    acc = [0.0] * len(grid)
    used = 0
    for i in range(len(q)):
        key = list(range(len(d))) if tie_keys is None else tie_keys[i]
        order = ref_rank(dist[i], key)
        total = sum(rel[i])
        if total == 0:
            if zero_relevant == "zero":
                used += 1
            continue
        used += 1
        precs, recs = [], []
        hits = 0
        for k, j in enumerate(order, start=1):
            hits += rel[i][j]
            precs.append(hits / k)
            recs.append(hits / total)
        for g, t in enumerate(grid):
            acc[g] += max(p for p, r in zip(precs, recs) if r >= t - 1e-12)
    return np.array(acc) / used


def ref_radius(q, d, lq, ld, radius, *, average="per_query", zero_relevant="zero"):
    dist, rel = ref_tables(q, d, lq, ld)
    precs, recs = [], []
    sum_h = sum_s = sum_r = 0
    for i in range(len(q)):
        total = sum(rel[i])
        if total == 0 and zero_relevant == "skip":
            continue
        retrieved = [j for j in range(len(d)) if dist[i][j] <= radius]
        h = sum(1 for j in retrieved if rel[i][j])
        precs.append(h / len(retrieved) if retrieved else 0.0)
        recs.append(h / total if total else 0.0)
        sum_h += h
        sum_s += len(retrieved)
        sum_r += total
    if average == "per_query":
        return sum(precs) / len(precs), sum(recs) / len(recs)
    return (sum_h / sum_s if sum_s else 0.0), (sum_h / sum_r if sum_r else 0.0)


# ======================================================================================
# helpers
# ======================================================================================


def random_case(seed, m=6, n=11, r=4, c=3, p_label=0.35):
    """Small random case with many ties (r = 4 bits -> 5 distance values)."""
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((m, r)) < 0.5, -1, 1).astype(np.int8)
    d = np.where(rng.random((n, r)) < 0.5, -1, 1).astype(np.int8)
    lq = (rng.random((m, c)) < p_label).astype(np.int8)
    ld = (rng.random((n, c)) < p_label).astype(np.int8)
    return q, d, lq, ld


def codes_at_distances(dists, r):
    """Query = all +1; database item j has its first dists[j] bits flipped to -1."""
    q = np.ones((1, r), dtype=np.int8)
    d = np.ones((len(dists), r), dtype=np.int8)
    for j, dj in enumerate(dists):
        d[j, :dj] = -1
    return q, d


def labels_for(relevant):
    """One query with label 0; item j has label 0 if relevant, label 1 otherwise."""
    lq = np.array([[1, 0]], dtype=np.int8)
    ld = np.array([[1, 0] if rj else [0, 1] for rj in relevant], dtype=np.int8)
    return lq, ld


SEEDS = [0, 1, 2, 3, 4]


@pytest.fixture(params=["vectorized", "per_query"])
def ranking_path(request, monkeypatch):
    """Run a test through both ways of reading ranked relevance (small / large databases)."""
    if request.param == "per_query":
        monkeypatch.setattr(M, "_ROW_LOOP_MIN_N", 0)
    return request.param

# ======================================================================================
# Hamming distance
# ======================================================================================


def test_hamming_distance_exact_whole_bytes():
    r = 64
    q = np.ones((1, r), dtype=np.int8)
    d = np.stack([-np.ones(r), np.ones(r), np.r_[-np.ones(8), np.ones(56)]]).astype(np.int8)
    # all 64 bits differ -> 64 (a uint8 lookup table overflowing at 255 would give 56)
    np.testing.assert_array_equal(M.hamming_distances(q, d), [[64, 0, 8]])


@pytest.mark.parametrize("r", [1, 7, 8, 16, 33, 64, 128, 300])
def test_hamming_distance_matches_bit_count(r):
    rng = np.random.default_rng(r)
    q = np.where(rng.random((5, r)) < 0.5, -1, 1).astype(np.int8)
    d = np.where(rng.random((9, r)) < 0.5, -1, 1).astype(np.int8)
    d[0] = -q[0]  # all bits differ
    got = M.hamming_distances(q, d)
    ref = [[ref_distance(a, b) for b in d] for a in q]
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.int32
    assert got[0, 0] == r


def test_float_codes_accepted():
    q, d, lq, ld = random_case(0)
    a = M.mean_average_precision(q, d, lq, ld)
    b = M.mean_average_precision(q.astype(np.float64), d.astype(np.float32), lq, ld)
    assert a == b


# ======================================================================================
# hand-computed cases
# ======================================================================================

# 1 query, 5 items (r = 4). distances  d = [2, 0, 1, 3, 4], relevant = [1, 1, 0, 0, 0]
# ranking: item1 (d0, rel), item2 (d1, irr), item0 (d2, rel), item3, item4
# sorted relevance [1, 0, 1, 0, 0]
HAND_D = [2, 0, 1, 3, 4]
HAND_REL = [1, 1, 0, 0, 0]


def hand_case():
    q, d = codes_at_distances(HAND_D, 4)
    lq, ld = labels_for(HAND_REL)
    return q, d, lq, ld


def test_hand_ap():
    args = hand_case()
    # AP = (P@1 + P@3) / 2 = (1/1 + 2/3) / 2 = 5/6
    assert M.mean_average_precision(*args) == pytest.approx(5 / 6)
    # mAP@2, hits denominator: top 2 = [1, 0], hits = 1 -> (1/1) / 1 = 1
    assert M.mean_average_precision(*args, top_k=2) == pytest.approx(1.0)
    # mAP@2, min_relevant denominator: min(2, 2 relevant) = 2 -> (1/1) / 2 = 1/2
    assert M.mean_average_precision(*args, top_k=2, denominator="min_relevant") == \
        pytest.approx(0.5)
    # mAP@3: [1, 0, 1] -> (1 + 2/3) / 2 = 5/6 under both denominators
    assert M.mean_average_precision(*args, top_k=3) == pytest.approx(5 / 6)
    assert M.mean_average_precision(*args, top_k=3, denominator="min_relevant") == \
        pytest.approx(5 / 6)
    # mAP@1: [1] -> 1 (hits) ; min(1, 2) = 1 -> 1
    assert M.mean_average_precision(*args, top_k=1, denominator="min_relevant") == 1.0


def test_hand_map_at_r_hits_vs_min_relevant():
    # sorted relevance [0, 1, 0, 0, 1, 1] (distances strictly increasing), 3 relevant.
    q, d = codes_at_distances([0, 1, 2, 3, 4, 5], 5)
    lq, ld = labels_for([0, 1, 0, 0, 1, 1])
    # @4: list [0, 1, 0, 0]: sum P@k over hits = 1/2; hits = 1 -> 1/2; min(4, 3) = 3 -> 1/6
    assert M.mean_average_precision(q, d, lq, ld, top_k=4) == pytest.approx(1 / 2)
    assert M.mean_average_precision(q, d, lq, ld, top_k=4, denominator="min_relevant") == \
        pytest.approx(1 / 6)
    # full: (1/2 + 2/5 + 3/6) / 3 = 14/30
    assert M.mean_average_precision(q, d, lq, ld) == pytest.approx((0.5 + 0.4 + 0.5) / 3)


def test_hand_precision_at_k():
    args = hand_case()
    # [1, 0, 1, 0, 0]: P@1 = 1, P@2 = 1/2, P@3 = 2/3, P@5 = 2/5
    np.testing.assert_allclose(M.precision_at_k(*args, [1, 2, 3, 5]), [1, 0.5, 2 / 3, 0.4])


def test_hand_pr_curve_ranking():
    args = hand_case()
    recall, precision = M.pr_curve_ranking(*args)
    np.testing.assert_allclose(recall, np.linspace(0, 1, 11))
    # (P, R) along the ranking: (1, .5) (.5, .5) (2/3, 1) (.5, 1) (.4, 1)
    # interpolated: t <= .5 -> max(1, .5, 2/3, .5, .4) = 1 ; t > .5 -> 2/3
    np.testing.assert_allclose(precision, [1] * 6 + [2 / 3] * 5)


def test_hand_pr_curve_recall_grid_float_edges():
    # 10 relevant items first: recall 3/10 must reach grid point linspace(0,1,11)[3]
    # (0.30000000000000004) -> interpolated precision 1 everywhere.
    q, d = codes_at_distances(list(range(12)), 12)
    lq, ld = labels_for([1] * 10 + [0, 0])
    _, precision = M.pr_curve_ranking(q, d, lq, ld)
    np.testing.assert_allclose(precision, np.ones(11))


def test_hand_pr_curve_radius():
    args = hand_case()
    res = M.pr_curve_radius(*args)
    np.testing.assert_array_equal(res["radius"], np.arange(5))
    # radius 0: {item1} 1/1, recall 1/2 ; 1: {1,2} 1/2, 1/2 ; 2: +item0 2/3, 1 ;
    # 3: 2/4, 1 ; 4: 2/5, 1
    np.testing.assert_allclose(res["precision"], [1, 0.5, 2 / 3, 0.5, 0.4])
    np.testing.assert_allclose(res["recall"], [0.5, 0.5, 1, 1, 1])


def test_hand_radius_per_query_vs_pooled():
    # r = 4. Query A: items at d = [0, 1, 2, 3] with relevance [1, 1, 0, 1] -> ball(2) has
    # 3 items, 2 relevant: precision 2/3, recall 2/3.
    # Query B: items at d = [2, 4, 4, 4], relevance [0, 1, 0, 0] -> ball has 1 item,
    # 0 relevant: precision 0, recall 0/1.
    # Query C: items at d = [3, 4, 4, 4] relevance [1, 0, 0, 0] -> ball empty: precision 0.
    # per query: P = (2/3 + 0 + 0)/3 = 2/9,  R = (2/3 + 0 + 0)/3 = 2/9
    # pooled:    P = (2 + 0 + 0)/(3 + 1 + 0) = 1/2,  R = 2/(3 + 1 + 1) = 2/5
    r = 4
    R = 3 * r
    qa, da = codes_at_distances([0, 1, 2, 3], r)
    qb, db = codes_at_distances([2, 4, 4, 4], r)
    qc, dc = codes_at_distances([3, 4, 4, 4], r)
    rels = [[1, 1, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0]]
    per_query = []
    for (qq, dd), rel in zip([(qa, da), (qb, db), (qc, dc)], rels):
        lq, ld = labels_for(rel)
        per_query.append(M.precision_recall_within_radius(qq, dd, lq, ld, radius=2))
    np.testing.assert_allclose(per_query, [(2 / 3, 2 / 3), (0, 0), (0, 0)])
    # Now all three queries on one database: concatenate items, and make items of other
    # queries irrelevant and far away by giving every query its own 4-bit block.
    Qall = -np.ones((3, R), dtype=np.int8)
    Dall = np.ones((12, R), dtype=np.int8)
    Lq = np.zeros((3, 3), dtype=np.int8)
    Ld = np.zeros((12, 3), dtype=np.int8)
    for k, (dd, rel) in enumerate(zip([da, db, dc], rels)):
        Qall[k, k * r:(k + 1) * r] = 1
        Lq[k, k] = 1
        for j in range(4):
            Dall[4 * k + j] = -1
            Dall[4 * k + j, k * r:(k + 1) * r] = dd[j]
            Ld[4 * k + j, k] = rel[j]
    # sanity: each query sees its own items at the stated distances, the rest at >= 4
    dist = M.hamming_distances(Qall, Dall)
    for k, dd in enumerate([[0, 1, 2, 3], [2, 4, 4, 4], [3, 4, 4, 4]]):
        np.testing.assert_array_equal(dist[k, 4 * k:4 * k + 4], dd)
        assert np.delete(dist[k], range(4 * k, 4 * k + 4)).min() > 2
    p, rc = M.precision_recall_within_radius(Qall, Dall, Lq, Ld, radius=2)
    assert (p, rc) == (pytest.approx(2 / 9), pytest.approx(2 / 9))
    p, rc = M.precision_recall_within_radius(Qall, Dall, Lq, Ld, radius=2, average="pooled")
    assert (p, rc) == (pytest.approx(1 / 2), pytest.approx(2 / 5))


def test_zero_relevant_zero_vs_skip():
    # query 0: the hand case (AP 5/6); query 1: label 2, shared by no item (AP undefined)
    q0, d = codes_at_distances(HAND_D, 4)
    lq0, ld = labels_for(HAND_REL)
    q = np.vstack([q0, q0])
    lq = np.vstack([np.c_[lq0, [[0]]], [[0, 0, 1]]]).astype(np.int8)
    ld = np.c_[ld, np.zeros(5, dtype=np.int8)]
    # zero: (5/6 + 0) / 2 = 5/12 ; skip: 5/6
    assert M.mean_average_precision(q, d, lq, ld) == pytest.approx(5 / 12)
    assert M.mean_average_precision(q, d, lq, ld, zero_relevant="skip") == pytest.approx(5 / 6)
    ap = M.average_precision_per_query(q, d, lq, ld, zero_relevant="skip")
    assert ap[0] == pytest.approx(5 / 6) and np.isnan(ap[1])
    np.testing.assert_allclose(M.average_precision_per_query(q, d, lq, ld), [5 / 6, 0])
    # within a top-K list: query 0 @1 has a hit; a query whose hits all lie beyond K
    # (top-1 of [0, 1, ...]) is "without relevant item in the considered list"
    q2, d2 = codes_at_distances([0, 1], 2)
    lq2, ld2 = labels_for([0, 1])
    assert M.mean_average_precision(q2, d2, lq2, ld2, top_k=1) == 0.0
    with pytest.warns(RuntimeWarning):
        assert np.isnan(M.mean_average_precision(q2, d2, lq2, ld2, top_k=1,
                                                 zero_relevant="skip"))
    # every query without relevant item and skip -> NaN + warning
    with pytest.warns(RuntimeWarning):
        v = M.mean_average_precision(q[1:], d, lq[1:], ld, zero_relevant="skip")
    assert np.isnan(v)


def test_zero_relevant_radius_and_pr():
    q0, d = codes_at_distances(HAND_D, 4)
    lq0, ld = labels_for(HAND_REL)
    q = np.vstack([q0, q0])
    lq = np.vstack([np.c_[lq0, [[0]]], [[0, 0, 1]]]).astype(np.int8)
    ld = np.c_[ld, np.zeros(5, dtype=np.int8)]
    # radius 2: query 0 -> (2/3, 1), query 1 (no relevant) -> (0, 0)
    assert M.precision_recall_within_radius(q, d, lq, ld) == \
        (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert M.precision_recall_within_radius(q, d, lq, ld, zero_relevant="skip") == \
        (pytest.approx(2 / 3), pytest.approx(1))
    _, pz = M.pr_curve_ranking(q, d, lq, ld)
    _, ps = M.pr_curve_ranking(q, d, lq, ld, zero_relevant="skip")
    np.testing.assert_allclose(ps, [1] * 6 + [2 / 3] * 5)
    np.testing.assert_allclose(pz, ps / 2)


# ======================================================================================
# ties
# ======================================================================================


def test_ties_stable_keeps_database_order():
    # all items tied at distance 0; relevance [0, 1, 1] in database order
    # stable ranking [0, 1, 1]: AP = (1/2 + 2/3)/2 = 7/12
    q, d = codes_at_distances([0, 0, 0], 3)
    lq, ld = labels_for([0, 1, 1])
    assert M.mean_average_precision(q, d, lq, ld) == pytest.approx(7 / 12)
    (sl, order, dist), = list(M.hamming_ranking(q, d))
    np.testing.assert_array_equal(order, [[0, 1, 2]])
    np.testing.assert_array_equal(dist, [[0, 0, 0]])
    # reversed database order -> [1, 1, 0]: AP = 1
    assert M.mean_average_precision(q, d[::-1], lq, ld[::-1]) == pytest.approx(1.0)


def test_ties_expected_hand():
    # 2 relevant among 3 tied items: placements {1,2}: AP 1, {1,3}: 5/6, {2,3}: 7/12
    # expected = (1 + 5/6 + 7/12)/3 = 29/36
    q, d = codes_at_distances([0, 0, 0], 3)
    lq, ld = labels_for([0, 1, 1])
    assert M.mean_average_precision(q, d, lq, ld, ties="expected") == pytest.approx(29 / 36)
    # P@1: each placement of position 1 relevant w.p. 2/3 -> 2/3
    np.testing.assert_allclose(M.precision_at_k(q, d, lq, ld, [1, 2, 3], ties="expected"),
                               [2 / 3, 2 / 3, 2 / 3])


def test_ties_expected_equals_average_over_all_permutations():
    # tiny tie-heavy case: 7 items, r = 2 -> distance groups of sizes 3, 2, 2
    q, d = codes_at_distances([1, 0, 1, 2, 0, 1, 2], 2)
    lq, ld = labels_for([1, 0, 0, 1, 1, 1, 0])
    dists = [1, 0, 1, 2, 0, 1, 2]
    _, rel = ref_tables(q, d, lq, ld)
    rel = rel[0]
    for top_k, den in [(None, "hits"), (2, "hits"), (3, "hits"), (4, "hits"), (5, "hits"),
                       (3, "min_relevant"), (6, "min_relevant")]:
        aps = []
        for key in ref_tie_orders(dists):
            order = ref_rank(dists, key)
            aps.append(ref_ap([rel[j] for j in order], top_k, den, sum(rel))[0])
        assert len(aps) == 2 * 6 * 2  # 2! * 3! * 2!
        got = M.mean_average_precision(q, d, lq, ld, ties="expected", top_k=top_k,
                                       denominator=den)
        assert got == pytest.approx(sum(aps) / len(aps), rel=1e-12, abs=1e-14)
    for k in range(1, 8):
        pk = []
        for key in ref_tie_orders(dists):
            order = ref_rank(dists, key)
            pk.append(sum(rel[j] for j in order[:k]) / k)
        got = M.precision_at_k(q, d, lq, ld, [k], ties="expected")[0]
        assert got == pytest.approx(sum(pk) / len(pk), rel=1e-12)


def test_ties_random_reproducible_and_seed_dependent():
    q, d, lq, ld = random_case(7, m=20, n=60, r=3)
    a = M.average_precision_per_query(q, d, lq, ld, ties="random", random_state=1)
    b = M.average_precision_per_query(q, d, lq, ld, ties="random", random_state=1)
    c = M.average_precision_per_query(q, d, lq, ld, ties="random", random_state=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # independent of the batch size
    e = M.average_precision_per_query(q, d, lq, ld, ties="random", random_state=1,
                                      batch_size=3)
    np.testing.assert_array_equal(a, e)
    # a Generator is accepted
    g = M.average_precision_per_query(q, d, lq, ld, ties="random",
                                      random_state=np.random.default_rng(1))
    np.testing.assert_array_equal(a, g)


def test_ties_random_is_permutation_key_order(ranking_path):
    # documented definition: sort by (distance, position in default_rng(seed).permutation(n))
    for seed in SEEDS:
        q, d, lq, ld = random_case(seed, m=4, n=10)
        perm = np.random.default_rng(seed).permutation(len(d))
        key = [0] * len(d)
        for pos, j in enumerate(perm):
            key[j] = pos
        keys = [key] * len(q)
        ref = ref_ap_per_query(q, d, lq, ld, tie_keys=keys)
        got = M.average_precision_per_query(q, d, lq, ld, ties="random", random_state=seed)
        np.testing.assert_allclose(got, ref, rtol=1e-12)
        ref = ref_ap_per_query(q, d, lq, ld, tie_keys=keys, top_k=4)
        got = M.average_precision_per_query(q, d, lq, ld, ties="random", random_state=seed,
                                            top_k=4)
        np.testing.assert_allclose(got, ref, rtol=1e-12)
        np.testing.assert_allclose(
            M.precision_at_k(q, d, lq, ld, [1, 3, 10], ties="random", random_state=seed),
            ref_precision_at_k(q, d, lq, ld, [1, 3, 10], tie_keys=keys), rtol=1e-12)
        grid = np.linspace(0, 1, 11)
        np.testing.assert_allclose(
            M.pr_curve_ranking(q, d, lq, ld, ties="random", random_state=seed)[1],
            ref_pr_ranking(q, d, lq, ld, grid, tie_keys=keys), rtol=1e-12)
        dist = M.hamming_distances(q, d)
        for sl, order, sdist in M.hamming_ranking(q, d, ties="random", random_state=seed):
            for i, row in zip(range(sl.start, sl.stop), order):
                assert list(row) == ref_rank(list(dist[i]), key)
                np.testing.assert_array_equal(sdist[i - sl.start], dist[i, row])


def test_ties_random_mean_approaches_expected():
    q, d, lq, ld = random_case(3, m=8, n=30, r=3)
    exp = M.mean_average_precision(q, d, lq, ld, ties="expected")
    exp_k = M.mean_average_precision(q, d, lq, ld, ties="expected", top_k=10)
    runs = [M.mean_average_precision(q, d, lq, ld, ties="random", random_state=s)
            for s in range(400)]
    runs_k = [M.mean_average_precision(q, d, lq, ld, ties="random", random_state=s, top_k=10)
              for s in range(400)]
    assert np.std(runs) > 1e-3  # ties matter here
    assert np.mean(runs) == pytest.approx(exp, abs=4 * np.std(runs) / 20)
    assert np.mean(runs_k) == pytest.approx(exp_k, abs=4 * np.std(runs_k) / 20)


# ======================================================================================
# randomized comparison with the references, every metric and option
# ======================================================================================


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("top_k,denominator", [(None, "hits"), (1, "hits"), (4, "hits"),
                                               (7, "hits"), (4, "min_relevant"),
                                               (9, "min_relevant")])
@pytest.mark.parametrize("zero_relevant", ["zero", "skip"])
def test_ap_matches_reference(seed, top_k, denominator, zero_relevant, ranking_path):
    q, d, lq, ld = random_case(seed)
    for ties in ["stable", "expected"]:
        ref = ref_ap_per_query(q, d, lq, ld, top_k=top_k, ties=ties, denominator=denominator,
                               zero_relevant=zero_relevant)
        got = M.average_precision_per_query(q, d, lq, ld, top_k=top_k, ties=ties,
                                            denominator=denominator,
                                            zero_relevant=zero_relevant, batch_size=4)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13, equal_nan=True)
        if not np.all(np.isnan(ref)):
            assert M.mean_average_precision(
                q, d, lq, ld, top_k=top_k, ties=ties, denominator=denominator,
                zero_relevant=zero_relevant) == pytest.approx(float(np.nanmean(ref)))


@pytest.mark.parametrize("seed", SEEDS)
def test_precision_at_k_matches_reference(seed, ranking_path):
    q, d, lq, ld = random_case(seed)
    ks = [1, 2, 5, 11]
    for ties in ["stable", "expected"]:
        np.testing.assert_allclose(M.precision_at_k(q, d, lq, ld, ks, ties=ties, batch_size=2),
                                   ref_precision_at_k(q, d, lq, ld, ks, ties=ties),
                                   rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("zero_relevant", ["zero", "skip"])
def test_pr_curve_ranking_matches_reference(seed, zero_relevant, ranking_path):
    q, d, lq, ld = random_case(seed)
    for grid in [np.linspace(0, 1, 11), np.array([0.0, 0.25, 0.33, 0.5, 1.0])]:
        rec, prec = M.pr_curve_ranking(q, d, lq, ld, recall_grid=grid,
                                       zero_relevant=zero_relevant, batch_size=4)
        np.testing.assert_allclose(rec, grid)
        np.testing.assert_allclose(prec, ref_pr_ranking(q, d, lq, ld, grid,
                                                        zero_relevant=zero_relevant),
                                   rtol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["per_query", "pooled"])
@pytest.mark.parametrize("zero_relevant", ["zero", "skip"])
def test_radius_metrics_match_reference(seed, average, zero_relevant):
    q, d, lq, ld = random_case(seed)
    res = M.pr_curve_radius(q, d, lq, ld, average=average, zero_relevant=zero_relevant,
                            batch_size=4)
    for rad in range(q.shape[1] + 1):
        ref = ref_radius(q, d, lq, ld, rad, average=average, zero_relevant=zero_relevant)
        assert res["precision"][rad] == pytest.approx(ref[0], rel=1e-12)
        assert res["recall"][rad] == pytest.approx(ref[1], rel=1e-12)
        got = M.precision_recall_within_radius(q, d, lq, ld, radius=rad, average=average,
                                               zero_relevant=zero_relevant)
        assert got == (pytest.approx(ref[0], rel=1e-12), pytest.approx(ref[1], rel=1e-12))
    # radius beyond r: everything retrieved
    assert M.precision_recall_within_radius(q, d, lq, ld, radius=99, average=average,
                                            zero_relevant=zero_relevant) == \
        (pytest.approx(res["precision"][-1]), pytest.approx(res["recall"][-1]))


@pytest.mark.parametrize("seed", SEEDS)
def test_hamming_ranking_stable_matches_reference(seed):
    q, d, _, _ = random_case(seed)
    dist = M.hamming_distances(q, d)
    seen = []
    for sl, order, sdist in M.hamming_ranking(q, d, batch_size=4):
        seen.extend(range(sl.start, sl.stop))
        for i, row in zip(range(sl.start, sl.stop), order):
            assert list(row) == ref_rank(list(dist[i]), list(range(len(d))))
    assert seen == list(range(len(q)))
    (_, order, sdist), = list(M.hamming_ranking(q, d, top_k=3))
    assert order.shape == (len(q), 3) and np.all(np.diff(sdist, axis=1) >= 0)


def test_multi_label_relevance_and_sparse_labels():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    q, d, lq, ld = random_case(11, c=5, p_label=0.5)
    ref = ref_map(q, d, lq, ld)
    assert M.mean_average_precision(q, d, scipy_sparse.csr_matrix(lq),
                                    scipy_sparse.csr_matrix(ld)) == pytest.approx(ref)
    assert M.mean_average_precision(q, d, lq.astype(bool), ld.astype(float)) == \
        pytest.approx(ref)
    rel = M.relevance(lq, ld)
    _, rref = ref_tables(q, d, lq, ld)
    np.testing.assert_array_equal(rel, rref)


def test_signed_label_weights_use_dot_product_rule():
    # labels with negative weights: relevance is the literal (Lq @ Ldb.T) > 0
    rng = np.random.default_rng(4)
    q, d, _, _ = random_case(4, m=5, n=12)
    lq = rng.integers(-1, 2, (5, 3)).astype(float)
    ld = rng.integers(-1, 2, (12, 3)).astype(float)
    np.testing.assert_array_equal(M.relevance(lq, ld), ref_tables(q, d, lq, ld)[1])
    np.testing.assert_allclose(M.average_precision_per_query(q, d, lq, ld),
                               ref_ap_per_query(q, d, lq, ld), rtol=1e-12)


def test_many_label_columns():
    # c = 150 labels: relevance is read from several 64-bit words; the only shared labels
    # are in the last columns for some pairs
    rng = np.random.default_rng(9)
    q, d, _, _ = random_case(9, m=5, n=12)
    lq = np.zeros((5, 150), dtype=np.int8)
    ld = np.zeros((12, 150), dtype=np.int8)
    lq[np.arange(5), rng.integers(100, 150, 5)] = 1
    ld[np.arange(12), rng.integers(100, 150, 12)] = 1
    lq[:, 140:] = 1  # queries share labels 140.. with items carrying them
    ld[:3, 64] = 1  # a label in the second word that no query has
    for ties in ["stable", "expected"]:
        np.testing.assert_allclose(M.average_precision_per_query(q, d, lq, ld, ties=ties),
                                   ref_ap_per_query(q, d, lq, ld, ties=ties), rtol=1e-12)
    assert M.precision_recall_within_radius(q, d, lq, ld, radius=1) == \
        tuple(pytest.approx(v) for v in ref_radius(q, d, lq, ld, 1))


def test_batch_size_does_not_change_results():
    q, d, lq, ld = random_case(5, m=13, n=40, r=6)
    for kw in [dict(), dict(top_k=7), dict(ties="expected"), dict(ties="expected", top_k=7)]:
        a = M.average_precision_per_query(q, d, lq, ld, **kw)
        for bs in [1, 5, 100]:
            np.testing.assert_allclose(M.average_precision_per_query(q, d, lq, ld,
                                                                     batch_size=bs, **kw), a)


def test_expected_large_groups_numerically_stable():
    # one query, 3000 items in 3 tie groups; compare with an independent float formula
    rng = np.random.default_rng(0)
    n = 3000
    dists = rng.integers(0, 3, n)
    rel = rng.random(n) < 0.3
    q, d = codes_at_distances(list(dists), 2)
    lq, ld = labels_for(list(rel))
    got = M.mean_average_precision(q, d, lq, ld, ties="expected")
    # direct (non closed-form) McSherry-Najork sum over positions
    s = 0.0
    nb = rb = 0
    for t in range(3):
        nt, rt = int((dists == t).sum()), int(rel[dists == t].sum())
        j = np.arange(1, nt + 1)
        s += (rt / nt) * np.sum((rb + 1 + (j - 1) * (rt - 1) / (nt - 1)) / (nb + j))
        nb, rb = nb + nt, rb + rt
    assert got == pytest.approx(s / rel.sum(), rel=1e-10)
    # mean of random-tie runs agrees
    runs = [M.mean_average_precision(q, d, lq, ld, ties="random", random_state=k)
            for k in range(30)]
    assert np.mean(runs) == pytest.approx(got, abs=5 * np.std(runs) / np.sqrt(30) + 1e-12)


# ======================================================================================
# input validation
# ======================================================================================


def _good():
    return random_case(0)


@pytest.mark.parametrize("mutate,match", [
    (lambda q, d, lq, ld: (q[:, :3], d, lq, ld), "same number of bits"),
    (lambda q, d, lq, ld: (q, d, lq[:-1], ld), "query_labels must have one row per query"),
    (lambda q, d, lq, ld: (q, d, lq, ld[:-1]), "db_labels must have one row per database"),
    (lambda q, d, lq, ld: (q, d, lq[:, :2], ld), "same number of label columns"),
    (lambda q, d, lq, ld: (np.where(q > 0, 1, 0), d, lq, ld), "query_codes must contain only"),
    (lambda q, d, lq, ld: (q, d * 2, lq, ld), "db_codes must contain only"),
    (lambda q, d, lq, ld: (q > 0, d, lq, ld), "query_codes must hold -1/\\+1"),
    (lambda q, d, lq, ld: (q[0], d, lq, ld), "query_codes must be a 2-D"),
    (lambda q, d, lq, ld: (q, d, lq.astype(float) * np.nan, ld), "query_labels contains NaN"),
    (lambda q, d, lq, ld: (q, d, lq, np.where(ld > 0, np.nan, 0.0)), "db_labels contains NaN"),
    (lambda q, d, lq, ld: (q, d, lq[:, 0], ld), "query_labels are class indices .* same form"),
    (lambda q, d, lq, ld: (q, d, lq, ld[:, :, None]), "db_labels must be a 2-D"),
    (lambda q, d, lq, ld: (q[:0], d, lq[:0], ld), "query_codes is empty"),
    (lambda q, d, lq, ld: (q, d[:0], lq, ld[:0]), "db_codes is empty"),
])
def test_bad_inputs(mutate, match):
    args = mutate(*_good())
    with pytest.raises(ValueError, match=match):
        M.mean_average_precision(*args)


def test_bad_options():
    args = _good()
    n = args[1].shape[0]
    with pytest.raises(ValueError, match="ties must be one of"):
        M.mean_average_precision(*args, ties="first")
    with pytest.raises(ValueError, match="zero_relevant must be one of"):
        M.mean_average_precision(*args, zero_relevant="ignore")
    with pytest.raises(ValueError, match="denominator must be one of"):
        M.mean_average_precision(*args, top_k=3, denominator="relevant")
    with pytest.raises(ValueError, match="average must be one of"):
        M.precision_recall_within_radius(*args, average="micro")
    with pytest.raises(ValueError, match="average must be one of"):
        M.pr_curve_radius(*args, average="macro")
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 11\]"):
        M.mean_average_precision(*args, top_k=n + 1)
    with pytest.raises(ValueError, match="top_k must be in"):
        M.mean_average_precision(*args, top_k=0)
    with pytest.raises(ValueError, match="top_k must be an integer"):
        M.mean_average_precision(*args, top_k=2.5)
    with pytest.raises(ValueError, match="ks must be in"):
        M.precision_at_k(*args, [0, 3])
    with pytest.raises(ValueError, match="ks must be in"):
        M.precision_at_k(*args, [n + 1])
    with pytest.raises(ValueError, match="ks must contain integers"):
        M.precision_at_k(*args, [1.5])
    with pytest.raises(ValueError, match="radius must be"):
        M.precision_recall_within_radius(*args, radius=-1)
    with pytest.raises(ValueError, match="batch_size must be"):
        M.mean_average_precision(*args, batch_size=0)
    with pytest.raises(ValueError, match="recall_grid values must lie in"):
        M.pr_curve_ranking(*args, recall_grid=[0, 1.5])
    with pytest.raises(ValueError, match="ties='expected' is not supported"):
        M.pr_curve_ranking(*args, ties="expected")
    with pytest.raises(ValueError, match="ties='expected' defines an expectation"):
        M.hamming_ranking(args[0], args[1], ties="expected")
    with pytest.raises(TypeError, match="random_state must be"):
        M.mean_average_precision(*args, ties="random", random_state="seed")


# ======================================================================================
# speed (loose bound; the Wiki protocol size)
# ======================================================================================


def test_wiki_size_is_fast():
    import time

    rng = np.random.default_rng(0)
    m, n, r, c = 693, 2173, 32, 10
    lab = lambda k: np.eye(c, dtype=np.int8)[rng.integers(0, c, k)]  # noqa: E731
    q = np.where(rng.random((m, r)) < 0.5, -1, 1).astype(np.int8)
    d = np.where(rng.random((n, r)) < 0.5, -1, 1).astype(np.int8)
    lq, ld = lab(m), lab(n)
    M.mean_average_precision(q, d, lq, ld)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        M.mean_average_precision(q, d, lq, ld)
        best = min(best, time.perf_counter() - t)
    assert best < 1.0  # typically ~0.03 s; loose bound for loaded CI machines
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.mean_average_precision(q, d, lq, ld, ties="expected", top_k=100)


def test_complex_labels_are_refused():
    # were accepted: relevance was decided on the real part only, silently
    from cmhash.metrics import mean_average_precision, relevance
    B = np.array([[1, -1], [-1, 1]])
    L = np.eye(2)
    with pytest.raises(ValueError, match="query_labels must be real numeric or boolean"):
        mean_average_precision(B, B, L + 1j, L)
    with pytest.raises(ValueError, match="db_labels must be real numeric or boolean"):
        relevance(L, L + 0j)


def test_class_index_labels_mean_same_class_on_the_union_of_classes():
    rng = np.random.default_rng(3)
    q = np.where(rng.random((30, 16)) < 0.5, -1, 1).astype(np.int8)
    d = np.where(rng.random((80, 16)) < 0.5, -1, 1).astype(np.int8)
    cq = rng.choice([1, 3], size=30)          # the queries use only classes 1 and 3
    cd = rng.integers(0, 4, size=80)          # the database uses 0..3
    classes = np.arange(4)
    onehot_q, onehot_d = (cq[:, None] == classes), (cd[:, None] == classes)
    mean_average_precision, relevance = M.mean_average_precision, M.relevance
    want = mean_average_precision(q, d, onehot_q, onehot_d)
    for lq, ld in ((cq, cd), (cq[:, None], cd[:, None]), (cq.astype(float), cd[:, None])):
        assert mean_average_precision(q, d, lq, ld) == pytest.approx(want, abs=0)
    np.testing.assert_array_equal(relevance(cq, cd), cq[:, None] == cd[None, :])
    # a 0/1 column is class indices too: class-0 items are relevant to each other
    b = np.array([0, 1, 0])
    np.testing.assert_array_equal(relevance(b[:, None], b[:, None]), b[:, None] == b[None, :])
    with pytest.raises(ValueError, match="class indices must be integers"):
        mean_average_precision(q, d, cq + 0.5, cd)
    with pytest.raises(ValueError, match="give both in the same form"):
        relevance(onehot_q, cd)
