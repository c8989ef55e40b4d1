"""FIP steps on a causal LM: forward_logits scores T-1 positions per block (t predicts t+1), so the
task/memory split of the joint forward and the reference rows must count T-1, not T."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

from fipgraph.models import build_model  # noqa: E402
from fipgraph.path import FrozenReference, RunConfig, fip_loss, fip_step, get_odist  # noqa: E402
from fipgraph.path.engine.memory import n_scored  # noqa: E402
from fipgraph.path.ops import OBJECTIVES  # noqa: E402


def _llama():
    torch.manual_seed(0)
    return build_model({"name": "llama", "kwargs": {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "intermediate_size": 32}})


def _blocks(n: int, t: int, seed: int) -> dict:
    ids = torch.randint(0, 40, (n, t), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_continual_step_on_a_causal_lm_splits_task_and_memory_rows():
    model = _llama()
    memory, task = _blocks(6, 9, seed=1), _blocks(3, 9, seed=2)
    assert n_scored(task) == 27 and n_scored(task, causal=True) == 24
    ref = FrozenReference.take(model, memory, batch_size=4)
    assert ref.logits.shape == (6 * 8, 40) and ref.offsets.tolist() == list(range(0, 49, 8))
    mem, ref_logits = ref.sample(4, torch.Generator().manual_seed(0))
    assert ref_logits.shape[0] == 4 * 8
    objective = OBJECTIVES["continual"](RunConfig(name="t", op="continual", task=2, start=0), model)
    odist = get_odist("bhattacharyya")
    out = fip_loss(model, objective, odist, 1.0, task, mem, ref_logits)
    # at the reference weights the memory rows are exactly the reference's (odist at its floor), and
    # the CE term is over the 24 task rows only (a T-row split would shift 3 memory rows into it)
    floor = float(odist(ref_logits, ref_logits))
    assert out.terms["odist"] == pytest.approx(floor, abs=1e-4)
    assert torch.allclose(out.memory_logits, ref_logits, atol=1e-5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        fip_step(model, opt, objective, odist, 1.0, task, mem, ref_logits)
    assert fip_loss(model, objective, odist, 1.0, task, mem, ref_logits).terms["odist"] > floor + 1e-4  # it moved
