"""The format guard: torch's own bytes (tests/fbgemm_golden.npz) reproduced exactly.

The file was written once by torch 2.14.1 CPU (FBGEMM, AVX2); its keys are listed in
docs/numerics.rst, "The golden bytes".
Nothing here needs torch.
"""

import numpy as np
import pytest

import qe4

DIMS = (2, 4, 6, 8, 16, 30, 64, 72, 128, 130)
# (golden key suffix, bits, method, n_bins, ratio); 2-bit keys exist only for D % 4 == 0
PREPACKS = [
    ("u4_d{}_minmax", 4, "minmax", 200, 0.16),
    ("u4_d{}_greedy", 4, "greedy", 200, 0.16),
    ("u4_d{}_greedy_nb100_r0.3", 4, "greedy", 100, 0.3),
    ("u2_d{}_minmax", 2, "minmax", 200, 0.16),
    ("u2_d{}_greedy", 2, "greedy", 200, 0.16),
    ("u8_d{}_byte", 8, "minmax", 200, 0.16),
]
CASES = [(d,) + p for d in DIMS for p in PREPACKS if p[1] != 2 or d % 4 == 0]


def test_golden_file_is_complete(golden):
    expected = {key.format(d) for d, key, *_ in CASES} | {f"u4_d{d}_x" for d in DIMS}
    expected |= {f"bag4_d{d}_{f}" for d in (8, 64, 130)
                 for f in ("packed", "indices", "offsets", "weights", "sum", "wsum")}
    assert expected | {"torch_version"} == set(golden)


@pytest.mark.parametrize("dim, key, bits, method, n_bins, ratio", CASES,
                         ids=[key.format(d) for d, key, *_ in CASES])
def test_prepack_bytes(golden, same_bytes, dim, key, bits, method, n_bins, ratio):
    x = golden[f"u4_d{dim}_x"]
    table = qe4.quantize(x, bits, method, n_bins=n_bins, ratio=ratio)
    same_bytes(table.data, golden[key.format(dim)])


@pytest.mark.parametrize("dim", (8, 64, 130))
@pytest.mark.parametrize("weighted", (False, True), ids=("sum", "wsum"))
def test_bag_outputs(golden, same_bytes, dim, weighted):
    g = {f: golden[f"bag4_d{dim}_{f}"] for f in ("packed", "indices", "offsets", "weights")}
    table = qe4.QuantizedTable.from_fused(g["packed"], 4)
    assert table.dim == dim
    out = qe4.embedding_bag(table, g["indices"], g["offsets"],
                            per_sample_weights=g["weights"] if weighted else None)
    same_bytes(out, golden[f"bag4_d{dim}_{'wsum' if weighted else 'sum'}"])


@pytest.mark.parametrize("dim", (8, 64, 130))
def test_bag_int32_and_last_offset_agree(golden, same_bytes, dim):
    """The same golden bags through int32 arrays and include_last_offset=True."""
    g = {f: golden[f"bag4_d{dim}_{f}"] for f in ("packed", "indices", "offsets", "weights")}
    table = qe4.QuantizedTable.from_fused(g["packed"], 4)
    offsets = np.append(g["offsets"], g["indices"].size).astype(np.int32)
    out = qe4.embedding_bag(table, g["indices"].astype(np.int32), offsets,
                            per_sample_weights=g["weights"], include_last_offset=True)
    same_bytes(out, golden[f"bag4_d{dim}_wsum"])
