"""Perplexity of language models, the metric spectrum and robustness measures, each against a
direct computation (tiny random transformers models, a tiny mlp)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fipgraph
from fipgraph.data import make_tasks
from fipgraph.errors import ConfigError
from fipgraph.models import build_model
from fipgraph.query import Ensemble, perplexity, spectrum
from fipgraph.query import spectra as spectrum_mod  # the module (the package exports the function)
from fipgraph.query.evaluation import mask_for_scoring
from fipgraph.query.robustness import adversarial_report, coherence, representation_diversity

torch.set_num_threads(1)
VOCAB, MASK = 97, 3


def _text_batches(n_batches=2, b=4, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, VOCAB, (b, t), generator=g)
        att = torch.ones(b, t, dtype=torch.long)
        att[0, 8:] = 0  # some padding
        ids[0, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": att})
    return out


def _store_with(tmp_path, spec, n=2):
    st = fipgraph.open_store(tmp_path / "lm", mode="a")
    torch.manual_seed(0)
    model = build_model(spec)
    ids = []
    for i in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        ids.append(st.append(model, parent=ids[-1] if ids else None))
    st.flush()
    return st, ids


def test_masked_lm_perplexity_equals_transformers_loss(tmp_path):
    spec = {"name": "bert", "kwargs": {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "intermediate_size": 64}}
    st, ids = _store_with(tmp_path, spec)
    batches = _text_batches()
    got = perplexity(st, ids, batches, name="toy", mask_token_id=MASK, progress=False, device="cpu")
    masked = [mask_for_scoring(b, MASK, seed=i) for i, b in enumerate(batches)]
    for i, b in enumerate(masked):  # the fixed-seed masking: ~15 % of attended tokens, never padding
        chosen = b["labels"] != -100
        assert not (chosen & (batches[i]["attention_mask"] == 0)).any()
        assert (b["input_ids"][chosen] == MASK).all() and 0.05 < chosen.float().mean() < 0.35
    for nid in ids:
        m = build_model(spec).eval()
        m.load_state_dict(st.state_dict(nid))
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for b in masked:
                n = int((b["labels"] != -100).sum())
                tot += float(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss) * n
                cnt += n
        assert got.loc[nid, "perplexity"] == pytest.approx(math.exp(tot / cnt), rel=1e-5)
    assert got.loc[ids[0], "perplexity"] != got.loc[ids[1], "perplexity"]
    cached = st.sql("select node_id, toy_perplexity from wide order by node_id")
    np.testing.assert_allclose(cached["toy_perplexity"], got["perplexity"].to_numpy(), rtol=1e-9)
    with pytest.raises(ConfigError, match="name="):
        perplexity(st, ids, batches, progress=False, device="cpu")
    st.close()


def test_causal_lm_perplexity_equals_transformers_loss(tmp_path):
    spec = {"name": "llama", "kwargs": {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "intermediate_size": 64}}
    st, ids = _store_with(tmp_path, spec)
    batch = _text_batches(1)[0]
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    got = perplexity(st, ids, [batch], name="toy", progress=False, device="cpu")
    for nid in ids:
        m = build_model(spec).eval()
        m.load_state_dict(st.state_dict(nid))
        with torch.no_grad():
            loss = m(**batch).loss  # HF shifts labels itself
        assert got.loc[nid, "perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    st.close()


def test_causal_lm_perplexity_standard_error_is_over_blocks(tmp_path):
    """perplexity_se: each block's mean loss from transformers, SE of the token-weighted mean over blocks."""
    spec = {"name": "llama", "kwargs": {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "intermediate_size": 64}}
    st, ids = _store_with(tmp_path, spec)
    batches = _text_batches(2)  # 8 blocks, one padded to 8 of 12 tokens
    for b in batches:
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    got = perplexity(st, ids, batches, name="toy", progress=False, device="cpu")
    m = build_model(spec).eval()
    m.load_state_dict(st.state_dict(ids[0]))
    sums, counts = [], []
    with torch.no_grad():
        for b in batches:
            for r in range(len(b["input_ids"])):
                one = {k: v[r:r + 1] for k, v in b.items()}
                n = int((one["labels"][0, 1:] != -100).sum())
                sums.append(float(m(**one).loss) * n)
                counts.append(n)
    sums, counts = np.array(sums), np.array(counts, dtype=float)
    mean = sums.sum() / counts.sum()
    se = math.sqrt(len(sums) / (len(sums) - 1) * ((sums - mean * counts) ** 2).sum()) / counts.sum()
    assert got.loc[ids[0], "loss"] == pytest.approx(mean, rel=1e-5)
    assert got.loc[ids[0], "loss_se"] == pytest.approx(se, rel=1e-4) and se > 0
    assert got.loc[ids[0], "perplexity_se"] == pytest.approx(math.exp(mean) * se, rel=1e-4)
    cached = st.sql("select metric from evals where dataset = 'toy' and node_id = ?", [int(ids[0])])
    assert {"perplexity", "perplexity_se", "loss", "loss_se"} <= set(cached["metric"])
    st.close()


@pytest.fixture(scope="module")
def digits():
    return make_tasks("digits", seed=0)[0]


def _mlp(seed, hidden=8):
    torch.manual_seed(seed)
    return build_model({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [hidden], "n_classes": 10}})


@pytest.mark.parametrize("dense_limit", [10_000, 0])  # dense eigvalsh route and Lanczos route
def test_spectrum_equals_eigvalsh_of_explicit_jjt(tmp_path, digits, monkeypatch, dense_limit):
    monkeypatch.setattr(spectrum_mod, "DENSE_LIMIT", dense_limit)
    model = _mlp(0)
    with fipgraph.open_store(tmp_path / "s", mode="a") as st:
        nid = st.append(model)
        st.flush()
        res = spectrum(st, nid, digits, k=6, n_examples=12, dtype=torch.float64, device="cpu")
        x = digits.test["x"][:12].double()
        m = model.double()
        params = {k: v.detach() for k, v in m.named_parameters()}
        jac = torch.func.jacrev(lambda p: torch.func.functional_call(m, p, (x,)))(params)
        J = torch.cat([v.reshape(120, -1) for v in jac.values()], 1)  # (N*m, n)
        ref = np.linalg.eigvalsh((J @ J.T / 12).numpy())[::-1][:6]
        np.testing.assert_allclose(res["eigenvalues"], ref, rtol=1e-6, atol=1e-9)
        n = J.shape[1]
        assert res["g_rank_bound"] == 120 and (n - 120) / n <= res["g_frac_small_lo"] <= res["g_frac_small_hi"]
        assert st.sql(f"select \"{digits.name}_g_eig1\" as e from wide where node_id={nid}")["e"][0] == \
            pytest.approx(ref[0])
        with pytest.raises(ConfigError, match="k=0"):
            spectrum(st, nid, digits, k=0)


def test_robustness_measures(digits):
    members = [_mlp(s) for s in (1, 2)]
    surrogate = _mlp(3)
    x, y = digits.test["x"][:40], digits.test["labels"][:40]
    ens = Ensemble(members, [1, 2])
    rep = adversarial_report(ens, x, y, n_classes=10, eps=0.3, surrogate=surrogate, max_iter=5, joint=True)
    assert all(0 <= a <= 1 for a in rep["pgd_whitebox_member"] + rep["pgd_transfer_member"])
    assert rep["pgd_surrogate_self"] <= rep["clean_ensemble"] + 1.0  # defined and finite
    with torch.no_grad():  # diversity by hand: std over members of ||first layer output||, mean over x
        layer = [m for m in members[0].modules() if isinstance(m, torch.nn.Linear)][0]
        name = [n for n, m in members[0].named_modules() if m is layer][0]
        norms = torch.stack([F.linear(x.flatten(1), dict(mm.named_modules())[name].weight, dict(mm.named_modules())[name].bias)
                             .norm(dim=1) for mm in members])
    div = representation_diversity(members, x)
    assert div[name] == pytest.approx(float(norms.std(0, unbiased=False).mean()), rel=1e-5)
    grads = []
    for m in [surrogate] + members:
        xi = x.clone().requires_grad_(True)
        F.cross_entropy(m(xi), y, reduction="sum").backward()
        grads.append(xi.grad.reshape(-1))
    coh = coherence(members, surrogate, x, y)
    expect = max(float(F.cosine_similarity(g, grads[0], dim=0)) for g in grads[1:])
    assert coh["coherence"] == pytest.approx(expect, rel=1e-5)


WORDS = "the a cat dog sat ran on far away mat and then slept".split()


def _word_tokenizer(folder):
    """A word-level tokenizer saved as a transformers folder (no hub, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    fast.save_pretrained(folder)
    return fast, len(vocab)


def test_perplexity_of_the_users_texts_and_export_with_its_tokenizer(tmp_path, capsys):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fipgraph.cli import main

    tok, vocab = _word_tokenizer(tmp_path / "tok")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64)
    spec = {"name": "hf", "kwargs": {"hf_class": "LlamaForCausalLM", "hf_config": cfg.to_dict()},
            "tokenizer": str(tmp_path / "tok")}
    st, ids = _store_with(tmp_path, spec)
    texts = ["the cat sat on the mat", "a dog ran far away and then slept", "the dog sat"]
    got = perplexity(st, ids, texts, progress=False, record=False, device="cpu")
    for nid in ids:  # each text on its own through transformers' own loss (mean over next tokens)
        m = LlamaForCausalLM(cfg).eval()
        m.load_state_dict(st.state_dict(nid))
        tot = cnt = 0
        with torch.no_grad():
            for t in texts:
                enc = tok(t, return_tensors="pt")
                n = enc["input_ids"].shape[1] - 1
                tot += float(m(**enc, labels=enc["input_ids"]).loss) * n
                cnt += n
        assert got.loc[nid, "perplexity"] == pytest.approx(math.exp(tot / cnt), rel=1e-5)
    assert got.attrs["dataset"].startswith("text-")
    st.close()
    (tmp_path / "mine.txt").write_text("\n".join(texts) + "\n\n")
    assert main(["perplexity", "--store", str(tmp_path / "lm"), "--text", str(tmp_path / "mine.txt"),
                 "--device", "cpu", "--no-record"]) == 0
    out = capsys.readouterr().out
    assert got.attrs["dataset"] in out and f"{got.loc[ids[1], 'perplexity']:.4f}"[:5] in out
    assert main(["export", str(ids[1]), "--store", str(tmp_path / "lm"), "--out", str(tmp_path / "ex")]) == 0
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "ex")
    assert reloaded("the cat sat")["input_ids"] == tok("the cat sat")["input_ids"]
    assert LlamaForCausalLM.from_pretrained(tmp_path / "ex").config.fipgraph["node_id"] == ids[1]
