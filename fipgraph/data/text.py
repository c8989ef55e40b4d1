"""Text tasks: VADER's rated sentences by domain (classification) and LM corpora (wiki, lee).

Classification batches: ``{"input_ids", "attention_mask", "labels"}`` with labels (B,).
LM batches: labels (B, T), -100 where not scored. Masked LM masks 15 % of tokens once, at a fixed
seed, so every evaluation of a node scores the same positions; causal LM labels are the inputs
(HF convention: unshifted, ``forward_logits`` shifts them).
"""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fipgraph.data.seeds import derive_seed
from fipgraph.data.task import Task
from fipgraph.errors import ConfigError

VADER_DOMAINS = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
                 "tweets": "tweets", "nyt": "nytEditorialSnippets"}
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
GENSIM_INSTALL = "pip install gensim"
LM_OBJECTIVES = ("mlm", "causal")
LM_SOURCES = ("wiki", "lee")
RATING_SCALE = (-4.0, 4.0)  # VADER's raters scored each sentence from -4 to 4
RATING_BINNINGS = ("quantile", "width")


def cache_dir() -> Path:
    """Where downloaded source archives are looked for: $FIPGRAPH_DATA, else ~/.cache/fipgraph."""
    env = os.environ.get("FIPGRAPH_DATA")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fipgraph"


def resolve_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object as given, or one loaded by name ("smollm2", "minilm", a folder): a build
    config or a CLI flag can only name it."""
    if isinstance(tokenizer, (str, Path)):
        from fipgraph.models import load_tokenizer
        return load_tokenizer(str(tokenizer))
    return tokenizer


def tokenize_texts(texts: Sequence[str], tokenizer: Any, max_length: int = 128) -> dict[str, torch.Tensor]:
    """Pad to the longest text (at most ``max_length`` tokens) -> input_ids, attention_mask (N, T)."""
    if tokenizer is None:
        raise ConfigError("text data needs tokenizer=...; e.g. fipgraph.models.load_tokenizer('minilm')")
    if tokenizer.pad_token is None:  # causal-LM tokenizers often have none; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ---- VADER ---------------------------------------------------------------------------------------

def _vader_member_bytes(archive: Path) -> tarfile.TarFile:
    outer = tarfile.open(archive, "r:gz")
    names = outer.getnames()
    if VADER_INNER in names:  # the sdist: the ground-truth files sit in a nested archive
        inner = outer.extractfile(VADER_INNER).read()
        return tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz")
    return outer  # hutto_ICWSM_2014.tar.gz itself


def find_vader(archive: str | Path | None = None) -> Path:
    """The VADER source archive (sdist or inner tarball) or an extracted hutto_ICWSM_2014 folder."""
    if archive is not None:
        candidates = [Path(archive)]
    else:
        d = cache_dir()
        candidates = [d / VADER_SDIST, d / "hutto_ICWSM_2014.tar.gz", d / "hutto_ICWSM_2014"]
    for c in candidates:
        if c.exists():
            return c
    d = cache_dir()
    raise ConfigError(f"VADER's rated sentences not found (looked for {[str(c) for c in candidates]}); "
                      f"download them with: mkdir -p {d} && pip download --no-deps --no-binary :all: "
                      f"vaderSentiment==3.3.2 -d {d}   (or set FIPGRAPH_DATA to the folder holding {VADER_SDIST})")


def load_vader_ratings(domain: str, archive: str | Path | None = None) -> tuple[list[str], list[float]]:
    """Sentences and their mean human rating (-4..4, the mean of about ten raters) of one domain."""
    if domain not in VADER_DOMAINS:
        raise ConfigError(f"unknown VADER domain {domain!r}; choose from {list(VADER_DOMAINS)}")
    path = find_vader(archive)
    fname = f"{VADER_DOMAINS[domain]}_GroundTruth.txt"
    if path.is_dir():
        raw = (path / fname).read_bytes()
    else:
        with _vader_member_bytes(path) as tar:
            member = next((m for m in tar.getnames() if m.endswith("/" + fname) or m == fname), None)
            if member is None:
                raise ConfigError(f"{path} has no {fname}; is it the vaderSentiment 3.3.2 source archive?")
            raw = tar.extractfile(member).read()
    texts, ratings = [], []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3:
            texts.append(parts[2].strip())
            ratings.append(float(parts[1]))
    return texts, ratings


def load_vader(domain: str, archive: str | Path | None = None) -> tuple[list[str], list[int]]:
    """Sentences and labels (1 = mean rating > 0, 0 = < 0; neutral 0.0 dropped) of one domain."""
    texts, labels, _ = rating_labels(*load_vader_ratings(domain, archive), k=2)
    return texts, labels


def rating_bins(ratings: Sequence[float], k: int, binning: str = "quantile") -> list[float]:
    """The k - 1 inner edges of k ordered rating classes (class c: edge[c-1] <= rating < edge[c]).

    quantile: equal-count bins of these ratings (balanced classes, like Yelp's five-star set with
    its equal count per star); width: equal-width bins over VADER's rating scale [-4, 4]."""
    if binning not in RATING_BINNINGS:
        raise ConfigError(f"rating_binning must be one of {RATING_BINNINGS}, got {binning!r}")
    if binning == "width":
        return [round(RATING_SCALE[0] + (RATING_SCALE[1] - RATING_SCALE[0]) * c / k, 6) for c in range(1, k)]  # -0.8, not -0.7999…
    return [float(q) for q in np.quantile(np.asarray(ratings, dtype=float), [c / k for c in range(1, k)])]


def rating_labels(texts: Sequence[str], ratings: Sequence[float], k: int, binning: str = "quantile"
                  ) -> tuple[list[str], list[int], list[float]]:
    """(texts, labels, edges): k = 2 is the sign of the mean rating (0.0 dropped, as VADER's binary
    use); k >= 3 is k ordered bins of the rating (every sentence kept, see ``rating_bins``)."""
    if k < 2:
        raise ConfigError(f"rating_classes entries must be >= 2, got {k}")
    if k == 2:
        kept = [(t, int(r > 0)) for t, r in zip(texts, ratings) if r != 0.0]
        return [t for t, _ in kept], [y for _, y in kept], [0.0]
    edges = rating_bins(ratings, k, binning)
    return list(texts), np.searchsorted(edges, ratings, side="right").tolist(), edges


def vader_tasks(domains: Sequence[str] | None, tokenizer: Any, *, seed: int = 0, test_size: float = 0.2,
                max_length: int = 64, head: str = "single", archive: str | Path | None = None,
                limit: int | None = None, rating_classes: Sequence[int] | None = None,
                rating_binning: str = "quantile") -> list[Task]:
    """One sentiment task per domain: binary by default (domain-incremental: one 2-way head).

    ``rating_classes``: per domain, 2 (sign of the rating) or k >= 3 ordered rating bins
    (``rating_binning``). With different class counts each task's outputs follow the previous task's
    (e.g. [5, 2]: task 1 on outputs 0-4, task 2 on 5-6, the paper's appended head): head="per_task"
    trains and scores a task on its own block; head="single" labels task 2's classes 5 and 6 and
    trains and scores over all 7 outputs (class-incremental, as chained image sources)."""
    from sklearn.model_selection import train_test_split

    domains = list(domains or VADER_DOMAINS)
    ks = list(rating_classes) if rating_classes is not None else [2] * len(domains)
    if len(ks) != len(domains):
        raise ConfigError(f"rating_classes={ks} needs one entry per domain {domains}")
    stacked = head == "single" and len(set(ks)) > 1  # class-incremental, as chained image sources: labels follow on
    tasks, offset = [], 0
    for i, (domain, k) in enumerate(zip(domains, ks)):
        texts, ratings = load_vader_ratings(domain, archive)
        if limit is not None:  # a fixed, seed-independent prefix keeps small experiments comparable
            texts, ratings = texts[:limit], ratings[:limit]
        texts, labels, edges = rating_labels(texts, ratings, k, rating_binning)
        tr_x, te_x, tr_y, te_y = train_test_split(texts, labels, test_size=test_size, random_state=seed,
                                                  stratify=labels)
        shift = offset if stacked else 0
        train = {**tokenize_texts(tr_x, tokenizer, max_length), "labels": torch.tensor(tr_y) + shift}
        test = {**tokenize_texts(te_x, tokenizer, max_length), "labels": torch.tensor(te_y) + shift}
        meta = {"source": "vader", "domain": domain, "head": head, "index": i}
        if k > 2:
            meta.update(rating_binning=rating_binning, rating_edges=[round(e, 4) for e in edges])
        tasks.append(Task(name=f"vader/{domain}", classes=list(range(shift, shift + k)),
                          n_classes=sum(ks) if stacked else k, label_offset=0 if head == "single" and not stacked
                          else offset, train=train, test=test, meta=meta))
        offset += k
    return tasks


# ---- language-model text -------------------------------------------------------------------------

def _gensim_path(name: str) -> Path:
    if importlib.util.find_spec("gensim") is None:
        raise ConfigError(f"text source needs gensim's bundled corpora; install it with: {GENSIM_INSTALL}")
    from gensim.test.utils import datapath
    return Path(datapath(name))


def load_lee() -> list[str]:
    """Lee news corpus: 300 documents, one per line."""
    raw = _gensim_path("lee_background.cor").read_text(encoding="latin-1")
    return [line.strip() for line in raw.splitlines() if line.strip()]


def load_wiki(min_words: int = 50) -> list[str]:
    """The 106-article Wikipedia dump bundled with gensim, markup stripped."""
    import bz2

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    path = _gensim_path("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    docs = []
    with bz2.open(path) as f:
        for page in extract_pages(f):
            text = " ".join(filter_wiki(page[1]).split())
            if len(text.split()) >= min_words:  # drop redirects and stubs
                docs.append(text)
    return docs


def mask_tokens(input_ids: torch.Tensor, tokenizer: Any, seed: int, prob: float = 0.15,
                special: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking at a fixed seed: of the chosen 15 %, 80 % [MASK], 10 % random, 10 % kept."""
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"objective 'mlm' needs a tokenizer with a mask token; {type(tokenizer).__name__} has none")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.rand(input_ids.shape, generator=gen) < prob
    if special is not None:
        chosen &= ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=gen)
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=gen)
    ids = torch.where(chosen & (roll < 0.8), torch.full_like(input_ids, tokenizer.mask_token_id), input_ids)
    ids = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, ids)
    return ids, labels


def _blocks(docs: Sequence[str], tokenizer: Any, block_size: int) -> torch.Tensor:
    """Concatenate the documents' tokens (separated by sep/eos) and cut into (N, block_size) blocks."""
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]  # long docs are cut into blocks below
        if sep is not None:
            ids.append(sep)
    n = len(ids) // block_size
    if n == 0:
        raise ConfigError(f"text has {len(ids)} tokens, fewer than one block of {block_size}; lower block_size")
    return torch.tensor(ids[:n * block_size]).reshape(n, block_size)


def _spread(ids: torch.Tensor, n: int | None) -> torch.Tensor:
    """n blocks evenly spaced over ids (all if n is None or >= len): a small held-out set that
    still samples every part of the held-out documents, not just the first one."""
    if n is None or n >= len(ids):
        return ids
    if n < 1:
        raise ConfigError(f"test_blocks={n} must be >= 1 (or None for every held-out block)")
    return ids[torch.linspace(0, len(ids) - 1, n).round().long()]


def lm_task(docs: Sequence[str], tokenizer: Any, *, name: str = "text", objective: str = "mlm",
            block_size: int = 128, seed: int = 0, test_size: float = 0.2, mlm_prob: float = 0.15,
            test_blocks: int | None = None) -> Task:
    """A masked- or causal-LM task from raw documents; held-out documents form the test split
    (``test_blocks``: keep only that many of its blocks, evenly spaced, to bound evaluation cost)."""
    if objective not in LM_OBJECTIVES:
        raise ConfigError(f"objective must be one of {LM_OBJECTIVES}, got {objective!r}")
    if tokenizer is None:
        raise ConfigError("LM text needs tokenizer=...; e.g. fipgraph.models.load_tokenizer('smollm2')")
    if len(docs) < 2:
        raise ConfigError(f"need at least 2 documents to hold some out, got {len(docs)}")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(test_size * len(docs)))
    splits = {"test": [docs[i] for i in order[:n_test]], "train": [docs[i] for i in order[n_test:]]}
    out = {}
    for k, (split, part) in enumerate(splits.items()):
        ids = _blocks(part, tokenizer, block_size)
        if split == "test":
            ids = _spread(ids, test_blocks)
        if objective == "mlm":
            special = ids == tokenizer.sep_token_id if tokenizer.sep_token_id is not None else None
            masked, labels = mask_tokens(ids, tokenizer, seed=derive_seed(seed, "mask", k), prob=mlm_prob, special=special)
            out[split] = {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}
        else:
            out[split] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    kind = "masked_lm" if objective == "mlm" else "causal_lm"
    return Task(name=f"{name}/{objective}", classes=[], n_classes=len(tokenizer), label_offset=0,
                train=out["train"], test=out["test"], kind=kind,
                meta={"source": name, "objective": objective, "block_size": block_size, "n_docs": len(docs),
                      "test_blocks": test_blocks})


def make_text_tasks(source: str | Sequence[str], split: Any = None, seed: int = 0, test_size: float = 0.2, *,
                    tokenizer: Any = None, head: str = "single", **options: Any) -> list[Task]:
    """Dispatch for ``make_tasks``: "vader" (split = list of domains), "wiki" / "lee" (LM), or a
    list of LM sources chained one task per source (e.g. ["wiki", "lee"]: pretraining-like text,
    then news). Each source's held-out split is the one it gets alone at the same seed."""
    tokenizer = resolve_tokenizer(tokenizer)
    if source == "vader":
        return vader_tasks(split, tokenizer, seed=seed, test_size=test_size, head=head, **options)
    if split is not None:
        raise ConfigError(f"text source {source!r} is one LM task per source; split must be None, got {split!r}")
    sources = [source] if isinstance(source, str) else list(source)
    bad = [s for s in sources if s not in LM_SOURCES]
    if not sources or bad:
        raise ConfigError(f"chained text sources must be LM sources {list(LM_SOURCES)}, got {sources}")
    loaders = {"lee": load_lee, "wiki": load_wiki}
    return [lm_task(loaders[s](), tokenizer, name=s, seed=seed, test_size=test_size, **options) for s in sources]
