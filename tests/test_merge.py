"""fipgraph.query.merge against mergekit itself (the differential oracle), stored lineage, and bad input.

The networks are a tiny randomly initialised LlamaForCausalLM (SmolLM2's architecture, 2 layers, hidden 32)
and perturbed copies of it stored as its descendants; mergekit merges the same nodes exported as
transformers folders (`fipgraph export`)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fipgraph
from fipgraph.errors import ConfigError, FipgraphError, NodeNotFoundError
from fipgraph.query import merge
from fipgraph.storage.transfer import export_node

mergekit = pytest.importorskip("mergekit")
torch.set_num_threads(1)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Node 0: the base; 1 -> 2: a two-step descendant; 3: a child; 4: an unrelated root; 5: another arch."""
    root = tmp_path_factory.mktemp("merge")
    torch.manual_seed(0)
    model = _llama()
    st = fipgraph.open_store(root / "store")

    def child(parent, seed):
        g = torch.Generator().manual_seed(seed)
        model.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=g)
                               for k, v in st.state_dict(parent).items()})
        return st.append(model, parent=parent)

    base = st.append(model)
    mid = child(base, 1)
    a, b = child(mid, 2), child(base, 3)
    stranger = st.append(_llama())
    other_arch = st.append({"w": torch.ones(3)})
    st.flush()
    folders = {n: export_node(st, n, root / f"node{n}") for n in (base, a, b)}
    yield st, dict(base=base, mid=mid, a=a, b=b, stranger=stranger, other_arch=other_arch), folders, root
    st.close()


def _mergekit(config: dict, out: Path) -> dict:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate({**config, "dtype": "float32"}), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    ref = {}
    for f in out.glob("*.safetensors"):
        ref.update(load_file(f))
    return ref


def _models(folders, ids, weights=None, **params):
    return [{"model": str(folders[n]), "parameters": {**({"weight": w} if weights else {}), **params}}
            for n, w in zip(ids, weights or [None] * len(ids))]


CASES = {  # name: (fipgraph kwargs, mergekit config builder, bit-exact)
    "linear": (dict(method="linear", weights=[0.2, 0.5, 0.3]),
               lambda f, n: {"merge_method": "linear",
                             "models": _models(f, [n["a"], n["b"], n["base"]], [0.2, 0.5, 0.3])},
               True),
    "task_arithmetic": (dict(method="task_arithmetic", weights=[0.7, 0.4], base="base", lambda_=0.8),
                        lambda f, n: {"merge_method": "task_arithmetic", "base_model": str(f[n["base"]]),
                                      "parameters": {"lambda": 0.8},
                                      "models": _models(f, [n["a"], n["b"]], [0.7, 0.4])},
                        True),
    "ties": (dict(method="ties", weights=[0.7, 0.3], base="base", density=0.5),
             lambda f, n: {"merge_method": "ties", "base_model": str(f[n["base"]]),
                           "models": _models(f, [n["a"], n["b"]], [0.7, 0.3], density=0.5)},
             True),
    "slerp": (dict(method="slerp", t=0.3),
              lambda f, n: {"merge_method": "slerp", "base_model": str(f[n["a"]]), "parameters": {"t": 0.3},
                            "models": _models(f, [n["a"], n["b"]])},
              False),  # mergekit takes sin/acos in float32 tensors, fipgraph in Python floats
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_matches_mergekit(zoo, case):
    st, n, folders, root = zoo
    kwargs, config, exact = CASES[case]
    kwargs = {**kwargs, "base": n[kwargs["base"]] if "base" in kwargs else None}
    nodes = [n["a"], n["b"], n["base"]] if case == "linear" else [n["a"], n["b"]]
    merged = merge(st, nodes, record=False, **kwargs)
    ref = _mergekit(config(folders, n), root / f"mergekit_{case}")
    assert sorted(ref) == sorted(merged.state)
    for name, r in ref.items():
        mine = merged.state[name]
        assert mine.dtype == r.dtype == torch.float32
        if exact:
            assert torch.equal(mine, r), name
        else:
            assert float((mine - r).abs().max() / r.abs().max()) <= 1e-6, name
        assert not torch.equal(mine, st.state_dict(n["a"])[name])  # the merge did something


def test_the_cli_names_every_method():
    from fipgraph.cli.zoo_cmds import MERGE_METHODS
    from fipgraph.query.merge_methods import METHODS

    assert sorted(MERGE_METHODS) == sorted(METHODS)


def test_a_merge_is_stored_with_its_parents_and_scores(zoo, tmp_path):
    st, n, _, _ = zoo
    ids = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids, "labels": ids}]
    before = len(st)
    class Text:  # the smallest thing query_batches accepts besides a Task: a test loader with a name
        name, kind, meta = "toy", "causal_lm", {}

        def test_loader(self, batch_size):
            return batches

    merged = merge(st, [n["a"], n["b"]], "ties", base=n["base"], weights=[0.6, 0.4], density=0.7, data=Text())
    assert len(st) == before + 1 and merged.node_id == before
    row = st.node(merged.node_id)
    assert row["op"] == "merge" and int(row["parent_id"]) == n["a"]
    parents = st.sql("SELECT parent_id, weight FROM node_parents WHERE node_id = ? ORDER BY position", [merged.node_id])
    assert parents.values.tolist() == [[n["a"], 0.6], [n["b"], 0.4]]
    assert st.graph().nodes[merged.node_id]["parents"] == [n["a"], n["b"]]
    assert all(torch.equal(v, merged.state[k]) for k, v in st.state_dict(merged.node_id).items())
    from fipgraph.query import evaluate

    direct = evaluate(st, [merged.node_id], Text(), record=False, recompute=True, progress=False, device="cpu")
    stored = st.sql("SELECT metric, value FROM evals WHERE node_id = ? AND dataset = 'toy'", [merged.node_id])
    assert dict(zip(stored["metric"], stored["value"])) == pytest.approx(direct.loc[merged.node_id].to_dict())
    import json
    assert json.loads(row["tags"])["merge"] == {"method": "ties", "nodes": [n["a"], n["b"]], "weights": [0.6, 0.4],
                                                "base": n["base"],
                                                "options": {"density": 0.7, "normalize": True, "lambda": 1.0}}


@pytest.mark.parametrize("nodes, kwargs, error, words", [
    (["a", "other_arch"], {}, ConfigError, "different architectures"),
    (["a", "b"], {"method": "task_arithmetic", "base": "stranger"}, ConfigError, "not an ancestor of node(s) [2, 3]"),
    (["a", "b"], {"method": "task_arithmetic", "base": "mid"}, ConfigError, "not an ancestor of node(s) [3]"),
    (["a", "b"], {"method": "ties"}, ConfigError, "needs base="),
    (["a", "b"], {"weights": [1.0]}, ConfigError, "one finite number per node"),
    (["a", "b"], {"weights": [1.0, -1.0]}, ConfigError, "sum to 0"),
    (["a", "b"], {"method": "average"}, ConfigError, "unknown merge method 'average'"),
    (["a", "b"], {"method": "linear", "density": 0.5}, ConfigError, "takes options ['normalize'], not ['density']"),
    (["a", "b", "base"], {"method": "slerp"}, ConfigError, "takes 2 nodes"),
    (["a", "b"], {"method": "slerp", "t": 1.5}, ConfigError, "t=1.5"),
    (["a", "b"], {"method": "linear", "base": "base"}, ConfigError, "takes no base"),
    (["a", 99], {}, NodeNotFoundError, "[99]"),
])
def test_bad_merges_write_nothing(zoo, nodes, kwargs, error, words):
    st, n, _, _ = zoo
    before = len(st)
    kwargs = {k: n[v] if k == "base" else v for k, v in kwargs.items()}
    with pytest.raises(error) as info:
        merge(st, [n.get(x, x) for x in nodes], **kwargs)
    assert isinstance(info.value, FipgraphError) and words in str(info.value)
    assert len(st) == before
