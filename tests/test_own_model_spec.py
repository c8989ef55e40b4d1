"""Unregistered model classes: stored by import path, rebuilt by model_from_node, clear errors where they cannot be."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fipgraph  # noqa: E402
from fipgraph.errors import ConfigError  # noqa: E402
from fipgraph.models import build_model, model_from_node  # noqa: E402
from fipgraph.models.user import unwrap  # noqa: E402
from tests.owncode.models import TwoLayer  # noqa: E402


def test_a_class_by_import_path_with_its_init_arguments_rebuilds_in_model_from_node(tmp_path):
    model = build_model({"name": "tests.owncode.models:TwoLayer", "kwargs": {"hidden": 8}})
    assert isinstance(model, TwoLayer) and model.head.in_features == 8
    with fipgraph.open_store(tmp_path / "s", "a") as store:
        node = store.append(model, step=0)
        again = model_from_node(store, node)
    assert type(again) is TwoLayer
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_factory_path_builds_and_a_bad_path_names_itself():
    assert build_model("tests.owncode.models:small_classifier").head.in_features == 16
    with pytest.raises(ConfigError, match="tests.owncode.models:nope.*cannot be imported"):
        build_model("tests.owncode.models:nope")


def test_a_module_without_init_arguments_is_stored_by_class_and_model_from_node_says_what_to_do(tmp_path):
    model = TwoLayer(hidden=8)
    with fipgraph.open_store(tmp_path / "s", "a") as store:
        node = store.append(model, step=0)
        assert store.arch_spec(node)["model"]["name"] == "tests.owncode.models:TwoLayer"
        with pytest.raises(ConfigError, match=rf"node {node}: .*without its init arguments.*load_into"):
            model_from_node(store, node)
        fresh = store.load_into(TwoLayer(hidden=8), node)
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_a_class_defined_in_a_function_cannot_be_rebuilt_elsewhere_and_says_why(tmp_path):
    class Local(nn.Linear):
        pass

    with fipgraph.open_store(tmp_path / "s", "a") as store:
        node = store.append(Local(3, 2), step=0)
        spec = {**store.arch_spec(node)["model"], "kwargs": {"in_features": 3, "out_features": 2}}
        spec.pop("init")
        with pytest.raises(ConfigError, match="inside a function.*importable module"):
            build_model(spec)


def test_compiled_and_ddp_style_wrappers_are_stored_unwrapped(tmp_path):
    inner = TwoLayer(hidden=8)
    compiled = torch.compile(inner)  # not run: compiling happens at the first call

    class DataParallel(nn.Module):  # what DDP / DataParallel look like to a state dict: module.<key>
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap(compiled) is inner and unwrap(DataParallel(compiled)) is inner
    prefixed = {f"module._orig_mod.{k}": v for k, v in inner.state_dict().items()}
    with fipgraph.open_store(tmp_path / "s", "a") as store:
        a = store.append(DataParallel(compiled), step=0)
        b = store.append(prefixed, step=1)
        for node in (a, b):
            state = store.state_dict(node)
            assert sorted(state) == sorted(inner.state_dict())
            assert all(torch.equal(state[k], v) for k, v in inner.state_dict().items())
        assert store.arch_spec(a)["model"]["name"] == "tests.owncode.models:TwoLayer"
