"""Reading a few tensors of a large node without materialising it.

``Store.state_dict(node, params=[...])`` comes here when a node's rows are too large to decode whole
within the read cache. The delta chain (keyframe .. node) is decoded one chunk column at a time:
chunk k of every row in the chain, from the keyframe down, each decoded from chunk k of its parent
and grandparent (the lossless encodings are elementwise). Only the asked-for tensors' words are
kept, so memory is three chunks (<= 3 x 64 MiB) plus the result, whatever the model's size.

Verification is not weakened: every chain row's full decoded bits are still hashed, chunk by chunk
in the order ``reader.checksum`` hashes them, and compared with the committed checksums before
anything is returned. Rows with lossy encodings (q8, bounded) are quantised per block or tensor, not
elementwise; their chains fall back to the whole-row decode.
"""

from __future__ import annotations

import numpy as np
import torch
import xxhash

from fipgraph.storage import codec
from fipgraph.storage.layout import Layout
from fipgraph.storage.reader import NodeInfo, RowReader


def chain_of(reader: RowReader, node_id: int) -> list[tuple[int, NodeInfo]]:
    """(node id, info) from the node's keyframe down to the node."""
    chain = [(node_id, reader.info_of(node_id))]
    while chain[-1][1].chain_depth > 0:
        parent = chain[-1][1].parent_id
        chain.append((parent, reader.info_of(parent)))
    return chain[::-1]


def streamable(chain: list[tuple[int, NodeInfo]]) -> bool:
    return all(info.encoding in codec.LOSSLESS for _, info in chain)


def read_tensors(reader: RowReader, layout: Layout, node_id: int, names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors of ``node_id``, verified, decoded chunk column by chunk column."""
    chain = chain_of(reader, node_id)
    wanted = layout.locate(names)
    out = {name: np.empty(n_words, dtype=g.word) for name, g, _, n_words, _ in wanted}
    hashes = {nid: xxhash.xxh3_128() for nid, _ in chain}
    arch_id = chain[-1][1].arch_id
    for nid, info in chain:  # a missing chunk would read back as zeros: refuse before decoding
        reader.check_files(node_id, nid, info)
    for g in layout.groups:
        if not g.n_words:
            continue
        array = reader.weights.array(arch_id, g.dtype)
        step = array.chunks[1]
        mine = [(name, start, n) for name, grp, start, n, _ in wanted if grp is g]
        for lo in range(0, g.n_words, step):
            hi = min(lo + step, g.n_words)
            parent = grandparent = None
            for nid, info in chain:
                stored = reader.read_slice(node_id, nid, info, g.dtype, lo, hi)
                words = codec.decode_words(stored, parent, grandparent, info.encoding)
                hashes[nid].update(np.ascontiguousarray(words).view(np.uint8))
                grandparent, parent = parent, words
            for name, start, n in mine:  # copy the overlap of [lo, hi) with each wanted tensor
                a, b = max(lo, start), min(hi, start + n)
                if a < b:
                    out[name][a - start:b - start] = parent[a - lo:b - lo]
    if reader.verify:
        for nid, info in chain:
            actual = hashes[nid].hexdigest()
            if info.checksum is not None and actual != info.checksum:
                raise reader.corrupt_hash(node_id, nid, info, actual)
    return {name: torch.from_numpy(out[name].view(np.uint8)).view(g.torch_dtype).reshape(shape)
            for name, g, _, _, shape in wanted}
