"""qe4.allocate: the Lagrangian solver (hand-worked, brute force, compiled twin) and the
allocation of real rows under a byte budget."""

import itertools

import numpy as np
import pytest

import qe4
import qe4_fast.allocate as FA
from qe4 import _lagrange as G
from qe4 import allocate as A
from qe4 import mixed
from qe4 import layouts as L
from qe4 import method_registry as M

F32 = np.float32


# --------------------------------------------------------------------------- the solver

def test_hull_by_hand(same_bytes):
    # costs 0, 2, 4, 6; row 0: point (2, 7) lies above the chord from (0, 10) to (4, 2),
    # so the hull goes 0 -> 4 (slope 2) -> 6 (slope 0.5).  Row 1: collinear points
    # (slopes 1, 1, 1): every point is a vertex.  Row 2: the costliest is worse: stop at 4.
    dist = np.array([[10.0, 7.0, 2.0, 1.0], [6.0, 4.0, 2.0, 0.0], [5.0, 1.0, 0.5, 0.6]])
    cost = np.array([0, 2, 4, 6])
    start, to, dcost, slope = G.hull(dist, cost)
    same_bytes(start, np.array([0, 0, 0], np.intp))
    same_bytes(to, np.array([[2, 3, -1], [1, 2, 3], [1, 2, -1]], np.intp))
    same_bytes(dcost, np.array([[4, 2, 0], [2, 2, 2], [2, 2, 0]], np.int64))
    same_bytes(slope, np.array([[2.0, 0.5, 0.0], [1.0, 1.0, 1.0], [2.0, 0.25, 0.0]]))


def test_hull_unavailable_options_and_equal_costs(same_bytes):
    # inf marks an option the item cannot take; among equal costs the least distortion
    # starts (row 1 starts at option 1), the lowest index on ties (row 2)
    dist = np.array([[np.inf, 3.0, 1.0], [5.0, 4.0, 0.0], [4.0, 4.0, 0.0]])
    cost = np.array([0, 0, 8])
    start, to, dcost, slope = G.hull(dist, cost)
    same_bytes(start, np.array([1, 1, 0], np.intp))
    same_bytes(to, np.array([[2, -1], [2, -1], [2, -1]], np.intp))
    same_bytes(slope, np.array([[0.25, 0.0], [0.5, 0.0], [0.5, 0.0]]))


def test_solve_by_hand(same_bytes):
    dist = np.array([[10.0, 7.0, 2.0, 1.0], [6.0, 4.0, 2.0, 0.0], [5.0, 1.0, 0.5, 0.6]])
    cost = np.array([[0, 2, 4, 6]])
    group = np.zeros(3, np.intp)
    # segments by slope: (row 0, +4, 2.0), (row 2, +2, 2.0), (row 1, +2, 1.0) x3,
    # (row 0, +2, 0.5), (row 2, +2, 0.25)
    for budget, choice, spent in [(0, [0, 0, 0], 0), (4, [2, 0, 0], 4), (6, [2, 0, 1], 6),
                                  (5, [2, 0, 0], 4),            # the remainder: nothing fits
                                  (8, [2, 1, 1], 8), (12, [2, 3, 1], 12), (14, [3, 3, 1], 14),
                                  (99, [3, 3, 2], 16)]:
        got, s = G.solve(dist, cost, group, budget)
        same_bytes(got, np.array(choice, np.intp))
        assert s == spent


def test_solve_fills_the_remainder():
    # budget 3: the prefix stops before row 0's segment (+4); the fill takes row 1's +2
    dist = np.array([[10.0, 0.0], [1.0, 0.0]])
    choice, spent = G.solve(dist, np.array([[0, 4], [0, 2]]), np.array([0, 1]), 3)
    assert choice.tolist() == [0, 1] and spent == 2


def _lower_hull_costs(points):
    """Costs of the vertices of the lower convex hull of (cost, dist) points."""
    pts = sorted(set(points))
    hull = []
    for p in pts:
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(p)
    best = []
    for c, d in hull:      # the decreasing part only
        if not best or d < best[-1][1]:
            best.append((c, d))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_solve_against_brute_force(seed):
    """Feasible, and never worse than the optimum at the largest Lagrangian breakpoint
    within the budget (the prefix reaches it; the fill only lowers the error)."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    cost = np.sort(rng.integers(0, 7, k))[None, :]
    dist = np.round(rng.random((n, k)) * 4, 2)
    combos = list(itertools.product(range(k), repeat=n))
    C = [int(sum(cost[0, c] for c in combo)) for combo in combos]
    D = [float(sum(dist[i, c] for i, c in enumerate(combo))) for combo in combos]
    vertices = _lower_hull_costs(list(zip(C, D)))
    for budget in range(min(C), max(C) + 2):
        choice, spent = G.solve(dist, cost, np.zeros(n, np.intp), budget)
        assert spent == int(cost[0, choice].sum()) <= budget
        got = float(dist[np.arange(n), choice].sum())
        ref = min(d for c, d in vertices if c <= budget)
        assert got <= ref + 1e-12


def test_solve_refuses():
    with pytest.raises(ValueError, match="budget of 3 bytes is below the 4 bytes"):
        G.solve(np.ones((2, 2)), np.array([[2, 5]]), np.zeros(2, np.intp), 3)
    with pytest.raises(ValueError, match="item 1 has distortions"):
        G.solve(np.array([[1.0, 0.0], [np.nan, 0.0]]), np.array([[0, 1]]), np.zeros(2, np.intp), 9)
    with pytest.raises(ValueError, match="item 0 has distortions"):
        G.solve(np.array([[np.inf, np.inf]]), np.array([[0, 1]]), np.zeros(1, np.intp), 9)


@pytest.mark.parametrize("n_threads", [1, 2, 7])
def test_fast_hull_same_bytes(same_bytes, n_threads):
    rng = np.random.default_rng(1)
    for k in (1, 2, 6):
        dist = np.round(rng.random((500, k)) * 3, 1)        # many ties
        dist[rng.random(dist.shape) < 0.1] = np.inf
        dist[np.isinf(dist).all(axis=1), 0] = 1.0
        cost = rng.integers(0, 6, k)
        for a, b in zip(G.hull(dist, cost), FA.hull(dist, cost, n_threads=n_threads)):
            same_bytes(b, a)


@pytest.mark.parametrize("n_threads", [1, 2, 7])
def test_fast_squared_errors_same_bytes(same_bytes, n_threads):
    rng = np.random.default_rng(2)
    for n_cols in (1, 7, 33):
        x = rng.standard_normal((257, n_cols)).astype(F32) * F32(100)
        xh = (x + rng.standard_normal(x.shape).astype(F32)).astype(F32)
        same_bytes(FA.squared_errors(x, xh, n_threads=n_threads), A.squared_errors(x, xh))


# --------------------------------------------------------------------------- budgets

@pytest.mark.parametrize("text, n_elements, expect", [
    (1000, 0, 1000), ("1000", 0, 1000), ("2K", 0, 2048), ("2.5G", 0, int(2.5 * 2**30)),
    ("3.0bpw", 100, 37), ("4.5bpw", 64, 36), ("0bpw", 10, 0),
])
def test_parse_budget(text, n_elements, expect):
    assert A.parse_budget(text, n_elements) == expect


@pytest.mark.parametrize("bad, exc, match", [
    (-1, ValueError, "budget must be >= 0 bytes, got -1"),
    (True, TypeError, "budget must be an int"), (2.5, TypeError, "budget must be an int"),
    ("3 bits", ValueError, "cannot read a budget from '3 bits'"),
])
def test_parse_budget_refuses(bad, exc, match):
    with pytest.raises(exc, match=match):
        A.parse_budget(bad, 10)


# --------------------------------------------------------------------------- allocate

def _table(n=300, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(F32)
    x[:5] *= F32(8)             # a few heavy rows
    return x


def test_rung_errors_are_the_squared_errors_of_each_rung(same_bytes):
    x = _table(70, 9)
    rungs = A.ladder()
    err = A.rung_errors(x, rungs, engine="reference", chunk_rows=32)
    for k, rung in enumerate(rungs):
        same_bytes(err[:, k], A.squared_errors(x, rung.reconstruct(x, "reference")))
    same_bytes(err[:, 0], A.squared_errors(x, np.zeros_like(x)))       # pruned: ||x||^2
    assert (err[:, -1] == 0).all()                                     # float32


@pytest.mark.parametrize("n_threads", [1, 2])
def test_fast_engine_same_errors_and_choice(same_bytes, n_threads):
    x = _table()
    w = qe4.zipf_weights(len(x))
    ref = A.allocate(x, "3.0bpw", weights=w, engine="reference")
    fast = A.allocate(x, "3.0bpw", weights=w, n_threads=n_threads)
    same_bytes(A.rung_errors(x, n_threads=n_threads), A.rung_errors(x, engine="reference"))
    same_bytes(fast.choices[0], ref.choices[0])
    assert (fast.nbytes, fast.error) == (ref.nbytes, ref.error)


def test_allocate_counts_every_byte_and_reports():
    x = _table()
    w = qe4.zipf_weights(len(x))
    budget = int(3.0 * x.size / 8)
    a = A.allocate(x, budget, weights=w)
    rungs = A.ladder()
    ch = a.choices[0]
    used = np.unique(ch).size
    rows = sum(rungs[k].row_bytes(x.shape[1]) for k in ch)
    assert a.nbytes == rows + mixed.map_nbytes(len(x), used) <= budget
    assert a.bpw == 8 * a.nbytes / x.size
    err = A.rung_errors(x)[np.arange(len(x)), ch]
    assert a.error == pytest.approx(float(w @ err) / float(w @ (x.astype(np.float64) ** 2).sum(1)),
                                    rel=1e-12)
    mix = a.mix()
    assert list(mix) == [r.name for r in rungs]
    assert sum(n for n, _ in mix.values()) == len(x)
    assert "weighted error" in a.summary()
    # heavier rows get at least the precision of lighter ones, on average
    assert ch[:30].mean() > ch[-30:].mean()


def test_allocate_beats_uniform_at_its_bytes():
    x = _table(2000, 16)
    w = qe4.zipf_weights(len(x))
    t4 = qe4.quantize(x, 4, "greedy")
    uniform = qe4.table_error(x, t4, w)
    a = A.allocate(x, t4.nbytes, weights=w)
    assert a.nbytes <= t4.nbytes
    assert a.error < 0.5 * uniform


def test_renumber_map_costs_only_the_tier_sizes():
    x = _table()
    a = A.allocate(x, "3.0bpw", row_map="renumber")
    t = A.allocate(x, "3.0bpw")
    assert a.error <= t.error
    used = np.unique(a.choices[0]).size
    rows = sum(A.ladder()[k].row_bytes(16) for k in a.choices[0])
    assert a.nbytes == rows + 16 * used


def test_many_tables_per_row_and_per_table():
    xs = {"users": _table(200, 16, 1), "items": _table(300, 8, 2), "tiny": _table(7, 4, 3)}
    ws = {k: qe4.zipf_weights(len(v)) for k, v in xs.items()}
    rows = A.allocate(xs, "3.0bpw", weights=ws)
    tabs = A.allocate(xs, "3.0bpw", weights=ws, per="table")
    total = sum(v.size for v in xs.values())
    for a in (rows, tabs):
        assert a.names == list(xs) and a.nbytes <= 3.0 * total / 8
        assert [c.size for c in a.choices] == [len(v) for v in xs.values()]
    assert all(np.unique(c).size == 1 for c in tabs.choices)
    assert rows.error <= tabs.error
    # per table: the bytes are the tables' rows at their rung and a 16-byte tier header
    assert tabs.nbytes == sum(len(v) * A.ladder()[int(c[0])].row_bytes(v.shape[1]) + 16
                              for v, c in zip(xs.values(), tabs.choices))


def test_given_errors_skip_the_quantization(same_bytes):
    x = _table()
    err = A.rung_errors(x)
    a = A.allocate(x, 5000, errors=err)
    b = A.allocate(x, 5000)
    same_bytes(a.choices[0], b.choices[0])


def test_allocate_refuses_bad_input():
    x = _table(10, 4)
    cases = [
        (dict(budget=100, per="rows"), ValueError, "per must be one of"),
        (dict(budget=100, row_map="bits"), ValueError, "row_map must be one of"),
        (dict(budget=100, weights=np.ones(9)), ValueError, r"weights must have shape \(10,\)"),
        (dict(budget=100, weights=-np.ones(10)), ValueError, r"weights\[0\] = -1.0"),
        (dict(budget=100, ladder=["greedy/4", "greedy/4"]), ValueError, "ladder repeats a rung"),
        (dict(budget=100, ladder=["greedy/9"]), ValueError, "bits must be one of"),
        (dict(budget=100, ladder=["bogus/4"]), ValueError, "method must be one of"),
        (dict(budget=100, ladder=["fp8"]), ValueError, "unknown ladder rung 'fp8'"),
        (dict(budget=100, ladder=[4]), TypeError, "a ladder rung must be a string"),
        (dict(budget=100, errors=np.zeros((10, 2))), ValueError, rf"errors must have shape \(10, {len(A.default_ladder())}\)"),
        (dict(budget=10, ladder=["greedy/4"]), ValueError, "budget of 10 bytes is below"),
    ]
    for kw, exc, match in cases:
        budget = kw.pop("budget")
        with pytest.raises(exc, match=match):
            A.allocate(x, budget, **kw)
    with pytest.raises(TypeError, match="x must have dtype"):
        A.allocate(x.astype(np.int32), 100)


# --------------------------------------------------------------------------- one rung per table

def _stored_bytes(choices, xs):
    """Bytes the chosen tables store (a table kept in float32: 4 per value)."""
    return sum(4 * xs[n].size if t is None else t.nbytes for n, t in choices.items())


@pytest.mark.parametrize("budget", ["2.5bpw", "3.0bpw", "6bpw", 2500])
def test_choose_tables(same_bytes, budget):
    xs = {"users": _table(200, 16, 1), "items": _table(300, 8, 2), "tiny": _table(7, 4, 3)}
    ws = {"users": qe4.zipf_weights(200), "items": np.arange(300.0)}      # tiny: every row 1
    got = A.choose_tables(xs, budget, weights=ws, engine="reference")
    a = got.allocation
    assert list(got) == list(xs) and a.per == "table"
    n_elements = 200 * 16 + 300 * 8 + 7 * 4
    assert _stored_bytes(got, xs) <= a.nbytes <= a.budget == A.parse_budget(budget, n_elements)
    full = dict(ws, tiny=np.ones(7))
    same = A.allocate(xs, budget, weights=full, per="table", engine="reference",
                      ladder=A.default_ladder(torch_only=True))      # TBE's widths
    assert [c.tobytes() for c in a.choices] == [c.tobytes() for c in same.choices]
    num = den = 0.0
    for (name, x), c in zip(xs.items(), a.choices):
        rung = a.ladder[int(c[0])]
        t = got[name]
        if rung.kind == "quantized":       # stored rowwise, as qe4.quantize stores it
            assert t == qe4.quantize(x, rung.bits, rung.method)
        elif rung.name == "float32":
            assert t is None
        else:
            assert t.layout == "mixed" and t.params["rungs"] == [rung.name]
        x_hat = x if t is None else qe4.dequantize(t)
        num += float(full[name] @ A.squared_errors(x, x_hat))
        den += float(full[name] @ A.squared_errors(x, np.zeros_like(x)))
    assert a.error == pytest.approx(num / den, rel=1e-12)


def test_choose_tables_spends_on_the_read_tables():
    x = _table(256, 16, 5)
    xs = {"read": x, "unread": x.copy()}
    got = A.choose_tables(xs, "4bpw", weights={"unread": np.zeros(256)})
    assert got["unread"].params["rungs"] == ["pruned"]             # 16 bytes, reads as zeros
    assert got["read"] == qe4.quantize(x, 4, A.DEFAULT_METHOD)
    assert (qe4.dequantize(got["unread"]) == 0).all()
    everything = A.choose_tables(xs, 10 ** 9)
    assert everything["read"] is None and everything["unread"] is None    # float32 kept


def test_choose_tables_refuses():
    x = _table(10, 4)
    with pytest.raises(TypeError, match="tables must be a non-empty dict"):
        A.choose_tables([x], 100)
    with pytest.raises(TypeError, match=r"non-empty dict .* \(empty\)"):
        A.choose_tables({}, 100)
    with pytest.raises(ValueError, match=r"weights names tables that are not in tables: \['b'\]"):
        A.choose_tables({"a": x}, 100, weights={"b": np.ones(10)})
    with pytest.raises(ValueError, match=r"weights\['a'\] must have shape \(10,\)"):
        A.choose_tables({"a": x}, 100, weights={"a": np.ones(3)})
    with pytest.raises(ValueError, match="budget of 10 bytes is below the 16 bytes"):
        A.choose_tables({"a": x}, 10)


def test_default_ladder_follows_the_registry(monkeypatch):
    from qe4 import method_registry as MR
    method = MR.get(A.DEFAULT_METHOD)
    served = method.layout_entry.torch_bits          # every tier of a mixed table has a torch op
    rungs = lambda widths: ("pruned", *(f"{A.DEFAULT_METHOD}/{b}" for b in sorted(widths)),  # noqa: E731
                            "float16", "float32")
    assert A.default_ladder() == rungs(method.allowed_bits)
    assert A.default_ladder(torch_only=True) == rungs(b for b in method.allowed_bits if b in served)
    assert f"{A.DEFAULT_METHOD}/3" in A.default_ladder()
    assert f"{A.DEFAULT_METHOD}/3" not in A.default_ladder(torch_only=True)   # torch has no op
    if not method.bits:             # the method stores every width of its layout: a new one joins
        layout = method.layout_entry
        monkeypatch.setattr(layout, "bits", tuple(sorted(set(layout.bits) | {7})))
        assert f"{A.DEFAULT_METHOD}/7" in A.default_ladder()
        assert f"{A.DEFAULT_METHOD}/7" not in A.default_ladder(torch_only=True)


def test_rungs_are_layouts_a_mixed_table_can_hold():
    mixed = L.LAYOUTS["mixed"]
    assert mixed.tier_layouts == ("rowwise", "codebook")     # two-tier has extras, grouped params
    assert mixed.tier_layouts == tuple(n for n, lay in L.LAYOUTS.items()
                                       if lay.self_contained and not lay.uses_params)
    for name, lay in L.LAYOUTS.items():
        assert mixed.holds(lay) == (name in mixed.tier_layouts)
        if mixed.holds(lay):
            assert mixed.tier_layout(lay.code) is lay
        else:
            with pytest.raises(ValueError, match=f"kind {lay.code} is not the code of a layout "
                                                 "a tier holds"):
                mixed.tier_layout(lay.code)
    for m in M.names(per_row=True):
        lay = M.get(m).layout_entry
        if not mixed.holds(lay):
            with pytest.raises(ValueError, match=f"ladder rung '{m}/4': {lay.name} rows cannot "
                                                 "be a tier of a mixed table"):
                A.Rung(f"{m}/4")


@pytest.mark.parametrize("seed", range(4))
def test_solve_reads_segments_block_by_block(monkeypatch, same_bytes, seed):
    # step 2 reads the hulls a block of items at a time: any block size, the same choice
    rng = np.random.default_rng(seed)
    n, k = 500, 5
    dist = np.round(rng.random((n, k)) * 8) / 8               # many equal slopes: ties matter
    group = rng.integers(0, 2, n).astype(np.intp)
    cost = np.sort(rng.integers(0, 40, (2, k)), axis=1)
    budget = int(cost[group, 0].sum() + rng.integers(0, int(cost[group, -1].sum()
                                                              - cost[group, 0].sum()) + 1))
    whole = G.solve(dist, cost, group, budget)
    for block in (1, 7, 64):
        monkeypatch.setattr(G, "_BLOCK_ROWS", block)
        choice, spent = G.solve(dist, cost, group, budget)
        same_bytes(choice, whole[0])
        assert spent == whole[1] <= budget


def test_weighting_in_place_is_the_same(same_bytes):
    e = np.array([[4.0, np.inf, 1.0], [2.0, np.inf, 0.5], [3.0, 1.0, 0.0]])
    w = np.array([0.5, 0.0, 2.0])
    want = A._weighted(e, w)
    same_bytes(want, np.array([[2.0, np.inf, 0.5], [0.0, np.inf, 0.0], [6.0, 2.0, 0.0]]))
    mine = e.copy()
    got = A._weighted(mine, w, in_place=True)
    assert got is mine
    same_bytes(got, want)
