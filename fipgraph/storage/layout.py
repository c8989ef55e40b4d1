"""Architecture layouts: how a state dict maps onto flat, dtype-grouped rows of bits.

Every tensor is stored by its exact bit pattern (viewed as unsigned integers of its own width), so
any dtype (float32, bfloat16, int64 counters, bool masks) round-trips bit for bit. Tensors of one
dtype are concatenated into one row per node: one zarr array per (architecture, dtype) group.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Mapping

import numpy as np

from fipgraph.errors import ArchitectureMismatchError

if TYPE_CHECKING:  # torch is imported where tensors are made, so reading and checking rows never loads it
    import torch

# Word width used to store each itemsize; 16-byte dtypes (complex128) are stored as two uint64 words.
_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64, 16: np.uint64}


# (itemsize, real floating point, complex) of torch's dtypes by name; others are looked up in torch itself
_DTYPES = {"float64": (8, True, False), "float32": (4, True, False), "float16": (2, True, False),
           "bfloat16": (2, True, False), "complex64": (8, False, True), "complex128": (16, False, True),
           "int64": (8, False, False), "int32": (4, False, False), "int16": (2, False, False),
           "int8": (1, False, False), "uint8": (1, False, False), "bool": (1, False, False)}


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ArchitectureMismatchError(f"unknown tensor dtype {name!r} in a stored architecture")
    return dtype


@dataclass(frozen=True)
class Group:
    """All tensors of one dtype, laid end to end in one row of words."""

    dtype: str  # torch dtype name, e.g. "float32"
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @cached_property
    def torch_dtype(self) -> torch.dtype:
        return _torch_dtype(self.dtype)

    @cached_property
    def _kind(self) -> tuple[int, bool, bool]:
        if self.dtype in _DTYPES:
            return _DTYPES[self.dtype]
        t = self.torch_dtype
        return t.itemsize, t.is_floating_point, t.is_complex

    @property
    def itemsize(self) -> int:
        return self._kind[0]

    @property
    def word(self) -> type:
        return _WORDS[self.itemsize]

    @property
    def words_per_item(self) -> int:
        return max(1, self.itemsize // 8)

    @cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def n_items(self) -> int:
        return sum(self.numels)

    @property
    def n_words(self) -> int:
        return self.n_items * self.words_per_item

    @property
    def is_float(self) -> bool:
        return self._kind[1]

    @property
    def is_complex(self) -> bool:
        return self._kind[2]


def _tie_key(t: torch.Tensor) -> tuple:
    """Two state-dict entries are one tensor (tied weights) when they view the same memory the same way."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


INTERNED_MAX = 256  # architectures remembered by Layout.of (a store rarely sees more than a few)
_INTERNED: dict = {}


@dataclass(frozen=True)
class Layout:
    """Parameter names, shapes and dtypes of one architecture, in state-dict order.

    ``params`` holds each distinct tensor once; ``ties`` lists the other names of tied tensors
    (e.g. an output layer sharing the input embedding) as (alias, name it shares, position in the
    state dict), so tied weights are stored, counted and measured once and reloaded tied.
    """

    params: tuple[tuple[str, tuple[int, ...], str], ...]
    ties: tuple[tuple[str, str, int], ...] = ()

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> "Layout":
        params, ties, first = [], [], {}
        for i, (k, v) in enumerate(state.items()):
            key = _tie_key(v) if v.numel() else None  # empty tensors share a null pointer but are not tied
            if key is not None and key in first:
                ties.append((k, first[key], i))
                continue
            if key is not None:
                first[key] = k
            params.append((k, tuple(v.shape), str(v.dtype).removeprefix("torch.")))
        layout = cls(tuple(params), tuple(ties))
        # one instance per architecture: its cached groups, sizes and id are computed once, not on every
        # append (0.3-0.5 ms of the training thread's time per saved step on a 6-tensor MLP)
        if len(_INTERNED) > INTERNED_MAX:
            _INTERNED.clear()
        return _INTERNED.setdefault(layout, layout)

    @classmethod
    def from_spec(cls, params: list, ties: list | None = None) -> "Layout":
        return cls(tuple((name, tuple(shape), dtype) for name, shape, dtype in params),
                   tuple((alias, target, int(pos)) for alias, target, pos in (ties or [])))

    @classmethod
    def from_arch_spec(cls, text: str) -> "Layout":
        """From the catalog's ``archs.spec`` column (JSON with "params" and optional "ties")."""
        spec = json.loads(text)
        return cls.from_spec(spec["params"], spec.get("ties"))

    def to_spec(self) -> list:
        return [[name, list(shape), dtype] for name, shape, dtype in self.params]

    def ties_spec(self) -> list:
        return [[alias, target, pos] for alias, target, pos in self.ties]

    @cached_property
    def arch_id(self) -> str:
        spec = self.to_spec() if not self.ties else {"params": self.to_spec(), "ties": self.ties_spec()}
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]  # untied: the same id as before ties

    def untied(self) -> "Layout":
        """The same architecture with every tied alias as a parameter of its own (how stores written
        before ties were recognised hold it)."""
        if not self.ties:
            return self
        by_name = {p[0]: p for p in self.params}
        aliases = {alias: target for alias, target, _ in self.ties}
        return Layout(tuple((n, *by_name[aliases.get(n, n)][1:]) for n in self.names))

    @property
    def names(self) -> list[str]:
        """Every state-dict name in order, tied aliases included."""
        names = [name for name, _, _ in self.params]
        for alias, _, pos in sorted(self.ties, key=lambda t: t[2]):
            names.insert(pos, alias)
        return names

    @cached_property
    def groups(self) -> tuple[Group, ...]:
        by_dtype: dict[str, list] = {}
        for name, shape, dtype in self.params:
            by_dtype.setdefault(dtype, []).append((name, shape))
        return tuple(
            Group(dtype, tuple(n for n, _ in items), tuple(s for _, s in items)) for dtype, items in by_dtype.items()
        )

    @property
    def n_params(self) -> int:
        return sum(g.n_items for g in self.groups)

    def check_matches(self, other: "Layout", what: str) -> None:
        """Raise a readable error naming the first parameter that differs."""
        if self == other:
            return
        if sorted(self.names) == sorted(other.names) and sorted(self.ties) != sorted(other.ties):
            raise ArchitectureMismatchError(
                f"state dict does not match {what} (architecture {other.arch_id}): the same tensors, tied differently "
                f"(tied here: {[t[:2] for t in self.ties][:5]}, there: {[t[:2] for t in other.ties][:5]})")
        mine, theirs = {p[0]: p for p in self.params}, {p[0]: p for p in other.params}
        missing, extra = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
        if missing or extra:
            detail = f"missing {missing[:5]}" if missing else ""
            detail += (", " if detail and extra else "") + (f"unexpected {extra[:5]}" if extra else "")
        else:
            diffs = [n for n in mine if mine[n] != theirs[n]]
            if not diffs:
                detail = "same parameters in a different order"
            else:
                d = diffs[0]
                detail = f"{d!r} is {list(mine[d][1])} {mine[d][2]}, expected {list(theirs[d][1])} {theirs[d][2]}"
        raise ArchitectureMismatchError(
            f"state dict does not match {what} (architecture {other.arch_id}): {detail}. "
            "Append it without a parent to start a new root, or pass allow_arch_change=True."
        )

    def pack(self, state: Mapping[str, torch.Tensor], take=None) -> dict[str, np.ndarray]:
        """Copy a state dict into one contiguous word array per dtype group (the snapshot);
        ``take(dtype, n)`` supplies the arrays (e.g. reused buffers), else they are new."""
        import torch

        rows = {}
        for g in self.groups:
            parts = [state[name].detach().reshape(-1).cpu().contiguous().view(torch.uint8) for name in g.names]
            out = take(g.word, g.n_words) if take is not None else np.empty(g.n_words, dtype=g.word)
            if parts:
                torch.cat(parts, out=torch.from_numpy(out.view(np.uint8)))
            rows[g.dtype] = out
        return rows

    def unpack(self, rows: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Inverse of pack: tensors that own their memory, in state-dict order."""
        import torch

        out = {}
        for g in self.groups:
            data = torch.from_numpy(np.ascontiguousarray(rows[g.dtype]).view(np.uint8).copy())
            offset = 0
            for name, shape, numel in zip(g.names, g.shapes, g.numels):
                nbytes = numel * g.itemsize
                out[name] = data[offset : offset + nbytes].view(g.torch_dtype).reshape(shape)
                offset += nbytes
        for alias, target, _ in self.ties:
            out[alias] = out[target]  # one tensor under both names: the tie survives load_state_dict
        return {name: out[name] for name in self.names}

    def locate(self, names: list[str]) -> list[tuple[str, Group, int, int, tuple[int, ...]]]:
        """(name, group, first word, word count, shape) of each named tensor within its group's row;
        a tied alias is located at the tensor it shares."""
        aliases = {alias: target for alias, target, _ in self.ties}
        where = {}
        for g in self.groups:
            offset = 0
            for name, shape, numel in zip(g.names, g.shapes, g.numels):
                where[name] = (g, offset, numel * g.words_per_item, shape)
                offset += numel * g.words_per_item
        unknown = [n for n in names if aliases.get(n, n) not in where]
        if unknown:
            raise ArchitectureMismatchError(f"no parameter(s) {unknown[:5]} in this architecture; it has "
                                            f"{self.names[:5]}{' ...' if len(self.names) > 5 else ''}")
        return [(n, *where[aliases.get(n, n)]) for n in names]

    def float_tensors(self, rows: Mapping[str, np.ndarray]) -> list[torch.Tensor]:
        """Zero-copy tensor views of the real floating-point groups (for norms and distances)."""
        import torch

        return [
            torch.from_numpy(np.ascontiguousarray(rows[g.dtype]).view(np.uint8)).view(g.torch_dtype)
            for g in self.groups
            if g.is_float
        ]
