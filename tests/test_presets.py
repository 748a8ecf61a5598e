"""Presets (qe4.preset_registry): every preset, in both engines, from the API and the CLI.

A preset is exactly the call it names: ``quantize(x, preset=p)`` gives the bytes of
``quantize(x, p.bits, p.method, scale_dtype=p.scale_dtype, **p.options)``, in qe4 and in
qe4_fast; ``qe4 quantize --preset`` writes the same table; passing an argument a preset sets
is a TypeError naming it; an unknown preset is a ValueError naming the choices.
"""

import numpy as np
import pytest

import qe4
from qe4 import cli
from qe4 import method_registry as M
from qe4 import preset_registry as P

try:
    import qe4_fast
except ImportError:         # the reference alone
    qe4_fast = None

X = np.random.default_rng(11).standard_normal((40, 24)).astype(np.float32)
ENGINES = {"qe4": qe4} | ({"qe4_fast": qe4_fast} if qe4_fast is not None else {})


@pytest.mark.parametrize("name", P.names())
@pytest.mark.parametrize("engine", list(ENGINES))
def test_preset_is_the_call_it_names(same_bytes, name, engine):
    p = P.get(name)
    mod = ENGINES[engine]
    t = mod.quantize(X, preset=name)
    want = mod.quantize(X, p.bits, p.method, scale_dtype=p.scale_dtype, **p.kwargs())
    assert (t.bits, t.method, t.params) == (want.bits, want.method, want.params)
    same_bytes(t.data, want.data)
    for k in want.extras:
        same_bytes(t.extras[k], want.extras[k])


@pytest.mark.parametrize("name", P.names())
def test_engines_agree_on_every_preset(same_bytes, name):
    if qe4_fast is None:
        pytest.skip("qe4_fast is not built")
    same_bytes(qe4_fast.quantize(X, preset=name).data, qe4.quantize(X, preset=name).data)


def test_presets_lists_every_preset_with_its_summary():
    listed = qe4.presets()
    assert tuple(listed) == P.names() and len(listed) >= 6
    for name, text in listed.items():
        p = P.get(name)
        assert text.startswith(f"{p.method}, {p.bits} bits: ") and p.summary in text
        assert p.bits in M.get(p.method).allowed_bits


def test_defaults_without_a_preset():
    same = qe4.quantize(X)
    assert (same.bits, same.method) == (P.DEFAULT_BITS, P.DEFAULT_METHOD) == (4, "greedy")
    assert qe4.quantize(X, None, None).data.tobytes() == same.data.tobytes()


@pytest.mark.parametrize("kwargs, named", [
    ({"bits": 4}, "['bits']"), ({"method": "greedy"}, "['method']"),
    ({"scale_dtype": "float32"}, "['scale_dtype']"), ({"n_groups": 8}, "['n_groups']"),
    ({"bits": 2, "method": "mse"}, "['bits', 'method']"),
])
@pytest.mark.parametrize("engine", list(ENGINES))
def test_a_preset_refuses_what_it_sets(kwargs, named, engine):
    with pytest.raises(TypeError, match=rf"preset='two-tier-4' sets bits, method, scale_dtype .*"
                                        rf"do not pass {named.replace('[', '.').replace(']', '.')}"):
        ENGINES[engine].quantize(X, preset="two-tier-4", **kwargs)


@pytest.mark.parametrize("bad, exc, match", [
    ("q4_k_m", ValueError, r"preset must be one of \('torch-2'.*got 'q4_k_m'"),
    (4, TypeError, "preset must be a string, got 4"),
])
def test_unknown_preset(bad, exc, match):
    with pytest.raises(exc, match=match):
        qe4.quantize(X, preset=bad)


def test_registry_refuses_a_preset_its_method_cannot_store():
    bad = P.Preset("kmeans-8", "kmeans", 8, "no such width")
    with pytest.raises(RuntimeError, match="does not store 8 bits"):
        P._register((bad,))


@pytest.mark.parametrize("name", [n for n in P.names() if M.get(P.get(n).method).per_row][:3]
                         + [n for n in P.names() if not M.get(P.get(n).method).per_row][:1])
def test_cli_preset_writes_the_same_table(capsys, tmp_path, same_bytes, name):
    src, dst = tmp_path / "x.npy", tmp_path / "x.qe4"
    np.save(src, X)
    code = cli.main(["quantize", str(src), str(dst), "--preset", name, "--no-progress",
                     "--engine", "reference"])
    out, err = capsys.readouterr()
    assert code == 0, err
    got, want = qe4.load(dst), qe4.quantize(X, preset=name)
    assert (got.bits, got.method) == (want.bits, want.method)
    same_bytes(got.data, want.data)


def test_cli_preset_with_bits_is_an_error(capsys, tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, X)
    code = cli.main(["quantize", str(src), str(tmp_path / "o.qe4"), "--preset", "mse-4",
                     "--bits", "2"])
    _, err = capsys.readouterr()
    assert code == 2 and "preset='mse-4' sets bits" in err and "['bits']" in err
    assert not (tmp_path / "o.qe4").exists()
