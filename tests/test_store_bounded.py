"""encoding="bounded": every weight within tolerance x its tensor's RMS step, recorded per node, and
no drift along a long chain (residuals are quantised against the reconstructed parent)."""

import numpy as np
import pytest
import torch

import fipgraph


def adam_like_walk(n: int, seed: int = 0):
    """Momentum-correlated steps of ~1e-3 per weight, like an Adam path, plus exact int and half tensors."""
    g = torch.Generator().manual_seed(seed)
    w, b, v = torch.randn(300, 200, generator=g), torch.zeros(200), torch.zeros(300, 200)
    out = []
    for i in range(n):
        v = 0.9 * v + 0.1 * torch.randn(300, 200, generator=g)
        w = w - 1e-3 * torch.sign(v) * (0.5 + torch.rand(300, 200, generator=g))
        if i % 3 == 0:
            b = b + 1e-2 * torch.randn(200, generator=g)
        out.append({"w": w.clone(), "b": b.clone(), "h": w[:4].half(), "count": torch.tensor(i)})
    return out


@pytest.mark.parametrize("tol", [0.05, 0.2])
def test_bounded_error_within_tolerance_of_each_step_without_drift(tmp_path, tol):
    states = adam_like_walk(200)
    with fipgraph.open_store(tmp_path / "s", encoding="bounded", tolerance=tol, keyframe_every=1000) as store:
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)
        store.flush()
        rows = store.sql("SELECT encoding, tolerance, max_error_ratio, max_abs_error FROM storage ORDER BY node_id")
        assert rows["encoding"].tolist()[:3] == ["key", "bnd", "bndp"] and set(rows["encoding"][2:]) == {"bndp"}
        assert (rows["max_error_ratio"][1:] <= 1).all() and rows["tolerance"][1] == tol
        prev = store.state_dict(0)  # the step is measured from the previous node as a reader sees it
        worst = 0.0
        for i, s in enumerate(states):
            got = store.state_dict(i)
            assert torch.equal(got["count"], s["count"])  # integers stay exact
            for k in ("w", "b", "h"):
                err = float((got[k].double() - s[k].double()).abs().max())
                rms = float((s[k].double() - prev[k].double()).square().mean().sqrt())
                floor = 4 * torch.finfo(s[k].dtype).eps / 2 * float(s[k].abs().max())
                assert err <= max(tol * rms, floor) * (1 + 1e-9), (i, k, err, rms)
                assert err <= rows["max_abs_error"][i] + 1e-15
                if k == "w" and i:
                    worst = max(worst, err / rms)
            prev = got
        assert worst > tol / 4  # it really is lossy: the bound is used, not met by accident
        # node 199 is 199 steps from its keyframe, and still within one step's tolerance: no drift
        assert float((store.state_dict(199)["w"] - states[199]["w"]).abs().max()) <= tol * 1.5e-3 * 1.01


def test_bounded_is_smaller_than_lossless(tmp_path):
    states = adam_like_walk(40)
    sizes = {}
    for enc in ("lossless", "bounded"):
        with fipgraph.open_store(tmp_path / enc, encoding=enc, tolerance=0.1) as store:
            parent = None
            for s in states:
                parent = store.append(s, parent=parent)
            sizes[enc] = int(store.sql("SELECT sum(stored_bytes) AS b FROM storage WHERE chain_depth > 0")["b"][0])
    assert sizes["bounded"] < 0.5 * sizes["lossless"]


def test_bad_tolerance_is_refused(tmp_path):
    for bad in (0, -1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="tolerance"):
            fipgraph.open_store(tmp_path / "s", encoding="bounded", tolerance=bad)
    assert not np.any([p.name == "metrics.duckdb" for p in tmp_path.rglob("*")])


def test_bounded_keeps_exact_zeros_of_a_pruned_node_and_its_descendants(tmp_path):
    """A projection zeroes weights far from their prediction; they must read back as 0 (the sparse
    mask a later walk keeps), also on the next nodes where the prediction of a zero is itself 0."""
    states = adam_like_walk(8)
    mask = torch.rand(300, 200, generator=torch.Generator().manual_seed(1)) < 0.4
    for s in states[4:]:  # nodes 4..7 are pruned: 40 % exact zeros, the rest keep walking
        s["w"] = s["w"].masked_fill(mask, 0.0)
    with fipgraph.open_store(tmp_path / "s", encoding="bounded", tolerance=0.2, keyframe_every=1000) as store:
        parent = None
        for s in states:
            parent = store.append(s, parent=parent)
        store.flush()
        for i in range(4, 8):
            got = store.state_dict(i)["w"]
            assert torch.equal(got == 0, mask), i  # exactly the pruned weights are zero, no more, no fewer
            assert float((got - states[i]["w"]).abs().max()) > 0  # the rest is still lossy
