"""Store URLs without a server: file:// is a folder, memory:// goes through the object-store path (fsspec,
zarr's FsspecStore, the published catalog, the lease), and URL mistakes fail clearly."""

from __future__ import annotations

import pytest
import torch

import fipgraph
from fipgraph.errors import RemoteStoreError, WriterLockedError
from fipgraph.storage.check import check_store
from fipgraph.storage.remote import redact
from tests._chains import append_chain


def _chain(store, n: int) -> list[tuple[int, dict]]:
    return append_chain(store, n, big=(300, 300), small=(12, 4))  # own chunk files; shared chunks


def test_file_url_is_the_folder(tmp_path):
    with fipgraph.open_store(f"file://{tmp_path}/s") as store:
        kept = _chain(store, 3)
    with fipgraph.open_store(tmp_path / "s", mode="r") as reader:  # the same store as a plain path
        assert all(torch.equal(reader.state_dict(n)[k], v) for n, sd in kept for k, v in sd.items())
    assert (tmp_path / "s" / "writer.lock").exists()  # a folder's flock, not a lease


def test_memory_url_round_trip_lease_and_check(tmp_path, monkeypatch):
    monkeypatch.setenv("FIPGRAPH_CACHE", str(tmp_path / "cache"))
    url = f"memory://fipgraph-test-{tmp_path.name}/s"
    with fipgraph.open_store(url) as store:
        kept = _chain(store, 4)
        store.flush()  # committed, hence published
        with pytest.raises(WriterLockedError, match="already open for writing"):
            fipgraph.open_store(url)
        with fipgraph.open_store(url, mode="r") as live:  # sees what the writer published so far
            assert len(live) == 8
    with fipgraph.open_store(url, mode="r") as reader:
        assert all(torch.equal(reader.state_dict(n)[k], v) for n, sd in kept for k, v in sd.items())
    assert check_store(url, progress=False).ok


def test_credentials_in_the_url_are_refused_unshown():
    with pytest.raises(RemoteStoreError, match="carries credentials") as err:
        fipgraph.open_store("s3://AKIAXXXX:very-secret-value@bucket/x")
    assert "very-secret-value" not in str(err.value) and "AKIAXXXX" not in str(err.value)


def test_redact_hides_option_and_environment_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-123")
    text = redact("a env-secret-123 b opt-secret-456 c", {"client_kwargs": {"aws_secret_access_key": "opt-secret-456"}})
    assert text == "a *** b *** c"


def test_walk_from_python_into_a_url(tmp_path, monkeypatch):
    monkeypatch.setenv("FIPGRAPH_CACHE", str(tmp_path / "cache"))
    results = {}
    for where in (f"memory://fipgraph-walk-{tmp_path.name}/s", tmp_path / "local"):
        torch.manual_seed(0)
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        result = fipgraph.walk(net, (x, y), op="finetune", store=where, steps=6, save_every=2, device="cpu",
                               progress=False)
        with fipgraph.open_store(where, mode="r") as reader:
            assert reader.sql("SELECT count(*) AS n FROM nodes")["n"][0] == len(result.nodes) == 4
            results[str(where)[:6]] = reader.state_dict(result.last_node)
    assert all(torch.equal(results["memory"][k], v) for k, v in results[str(tmp_path)[:6]].items())
