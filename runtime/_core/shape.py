"""Extents, points and shapes: named, strided views over the ranks of a mesh.

Semantics follow Meta Monarch's ``Shape``/``NDSlice`` (``monarch._src.actor.shape``): a shape is a
tuple of dimension labels over a strided slice ``offset + sum(i_d * stride_d)`` of the ranks the
mesh was spawned with. ``slice(dim=int)`` drops the dimension, ``slice(dim=slice(...))`` keeps it
and renumbers it from 0 (steps allowed).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self

__all__ = ["Extent", "MeshTrait", "Point", "Shape"]


class Extent(Mapping[str, int]):
    """The sizes of a mesh's named dimensions, e.g. ``Extent(["hosts", "gpus"], [2, 4])``.

    Behaves as a read-only ``dict`` from label to size (insertion order = dimension order).
    """

    __slots__ = ("_labels", "_sizes")

    def __init__(self, labels: Sequence[str], sizes: Sequence[int]) -> None:
        if len(labels) != len(sizes):
            raise ValueError(f"extent has {len(labels)} labels but {len(sizes)} sizes")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate dimension label in {list(labels)!r}")
        for label, size in zip(labels, sizes):
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"dimension {label!r} has invalid size {size!r}")
        self._labels = tuple(labels)
        self._sizes = tuple(sizes)

    @classmethod
    def from_dict(cls, sizes: Mapping[str, int]) -> Extent:
        """Build from ``{"hosts": 2, "gpus": 4}``."""
        return cls(list(sizes.keys()), list(sizes.values()))

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def sizes(self) -> tuple[int, ...]:
        return self._sizes

    @property
    def nelements(self) -> int:
        """Number of points (ranks) in the extent."""
        n = 1
        for s in self._sizes:
            n *= s
        return n

    def __getitem__(self, label: str) -> int:
        try:
            return self._sizes[self._labels.index(label)]
        except ValueError:
            raise KeyError(label) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Extent):
            return self._labels == other._labels and self._sizes == other._sizes
        if isinstance(other, Mapping):
            return dict(self) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._labels, self._sizes))

    def __repr__(self) -> str:
        return f"Extent({dict(zip(self._labels, self._sizes))!r})"

    def point(self, rank: int) -> Point:
        """The point at row-major ``rank`` of this extent."""
        return Point(rank, self)

    def rank_of(self, coords: Mapping[str, int]) -> int:
        """Row-major rank of the point with these coordinates."""
        rank = 0
        for label, size in zip(self._labels, self._sizes):
            c = coords[label]
            if not 0 <= c < size:
                raise IndexError(f"coordinate {label}={c} out of range 0..{size - 1}")
            rank = rank * size + c
        return rank

    def __reduce__(self) -> tuple[Any, ...]:
        return (Extent, (self._labels, self._sizes))


class Point(Mapping[str, int]):
    """A point of an extent: its row-major ``rank`` and per-label coordinates.

    ``point["gpus"]`` is the coordinate along ``gpus``; ``point.rank`` the linear rank.
    """

    __slots__ = ("_extent", "_rank")

    def __init__(self, rank: int, extent: Extent) -> None:
        if not 0 <= rank < max(extent.nelements, 1):
            raise IndexError(f"rank {rank} out of range for {extent!r}")
        self._rank = rank
        self._extent = extent

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def extent(self) -> Extent:
        return self._extent

    def coords(self) -> tuple[int, ...]:
        out = []
        r = self._rank
        for size in reversed(self._extent.sizes):
            out.append(r % size if size else 0)
            r = r // size if size else 0
        return tuple(reversed(out))

    def __getitem__(self, label: str) -> int:
        try:
            i = self._extent.labels.index(label)
        except ValueError:
            raise KeyError(label) from None
        return self.coords()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._extent.labels)

    def __len__(self) -> int:
        return len(self._extent.labels)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Point):
            return self._rank == other._rank and self._extent == other._extent
        if isinstance(other, Mapping):
            return dict(self) == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._rank, self._extent))

    def __repr__(self) -> str:
        return f"Point({dict(self)!r}, rank={self._rank})"

    def __str__(self) -> str:
        """Monarch's form: each label's coordinate over its size, ``{'hosts': 0/1, 'gpus': 0/2}``."""
        coords = self.coords()
        inner = ", ".join(f"{label!r}: {c}/{n}" for label, c, n in zip(self._extent.labels, coords, self._extent.sizes))
        return "{" + inner + "}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Point, (self._rank, self._extent))


class Shape:
    """Named dimensions over a strided slice of global ranks.

    Args:
        labels: dimension names, outermost first.
        offset: the global rank of the shape's first point.
        sizes: size of each dimension.
        strides: stride of each dimension in global ranks.
    """

    __slots__ = ("_ranks", "labels", "offset", "sizes", "strides")

    def __init__(
        self,
        labels: Sequence[str],
        offset: int,
        sizes: Sequence[int],
        strides: Sequence[int] | None = None,
    ) -> None:
        if strides is None:
            strides = _dense_strides(sizes)
        if not len(labels) == len(sizes) == len(strides):
            raise ValueError("labels, sizes and strides must have the same length")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate dimension label in {list(labels)!r}")
        self.labels: tuple[str, ...] = tuple(labels)
        self.offset = offset
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.strides: tuple[int, ...] = tuple(strides)
        self._ranks: tuple[int, ...] | None = None

    @classmethod
    def dense(cls, extent: Mapping[str, int]) -> Shape:
        """A shape covering ranks ``0..n-1`` row-major, e.g. ``Shape.dense({"hosts": 2, "gpus": 4})``."""
        return cls(list(extent.keys()), 0, list(extent.values()))

    @property
    def extent(self) -> Extent:
        return Extent(self.labels, self.sizes)

    def __len__(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n

    def ranks(self) -> tuple[int, ...]:
        """Global ranks of every point, in row-major order of this shape."""
        if self._ranks is None:
            ranks = [self.offset]
            for size, stride in zip(self.sizes, self.strides):
                ranks = [r + i * stride for r in ranks for i in range(size)]
            self._ranks = tuple(ranks)
        return self._ranks

    def global_rank(self, local: int) -> int:
        return self.ranks()[local]

    def slice(self, **kwargs: int | slice) -> Shape:
        """Select along named dimensions (Monarch's ``MeshTrait.slice``).

        Raises:
            ValueError: unknown dimension label.
            IndexError: an integer index out of range.
        """
        for key in kwargs:
            if key not in self.labels:
                raise ValueError(f"unknown dimension {key!r}; this mesh has {list(self.labels)}")
        labels: list[str] = []
        sizes: list[int] = []
        strides: list[int] = []
        offset = self.offset
        for label, size, stride in zip(self.labels, self.sizes, self.strides):
            sel = kwargs.get(label)
            if sel is None:
                labels.append(label)
                sizes.append(size)
                strides.append(stride)
            elif isinstance(sel, slice):
                start, stop, step = sel.indices(size)
                if step <= 0:
                    raise ValueError(f"slice step must be positive for {label!r}")
                n = len(range(start, stop, step))
                offset += start * stride
                labels.append(label)
                sizes.append(n)
                strides.append(stride * step)
            elif isinstance(sel, int) and not isinstance(sel, bool):
                idx = sel + size if sel < 0 else sel
                if not 0 <= idx < size:
                    raise IndexError(f"index {sel} out of range for dimension {label!r} of size {size}")
                offset += idx * stride
            else:
                raise TypeError(f"slice({label}=...) takes an int or a slice, not {type(sel).__name__}")
        return Shape(labels, offset, sizes, strides)

    def flatten(self, name: str) -> Shape:
        """All dimensions as one named ``name``; the shape must be dense (Monarch's ``flatten``)."""
        dense = _dense_strides(self.sizes)
        if tuple(dense) != self.strides and len(self) > 1:
            # a sparse (sliced with steps) shape cannot be one strided dimension
            raise ValueError(f"cannot flatten sparse mesh: strides {self.strides} != {tuple(dense)}")
        return Shape([name], self.offset, [len(self)], [1])

    def rename(self, **kwargs: str) -> Shape:
        """Rename dimensions: ``rename(hosts="dp")``."""
        for key in kwargs:
            if key not in self.labels:
                raise ValueError(f"unknown dimension {key!r}; this mesh has {list(self.labels)}")
        return Shape([kwargs.get(lb, lb) for lb in self.labels], self.offset, self.sizes, self.strides)

    def split(self, **kwargs: Any) -> Shape:
        """Split dimensions: ``split(hosts=("dp", "pp"), pp=2)`` (Monarch's ``split``).

        Raises:
            ValueError: a size does not divide, two unknown sizes, duplicate or unused names.
        """
        splits: dict[str, Sequence[str]] = {}
        constraints: dict[str, int] = {}
        for key, value in kwargs.items():
            if key in self.labels:
                if isinstance(value, str):
                    raise ValueError(f"expected a sequence of dimension names for {key!r}, got {value!r}")
                splits[key] = tuple(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                constraints[key] = value
            else:
                raise ValueError(f"{key!r} is not a dimension; give an integer size for a new dimension")
        labels: list[str] = []
        sizes: list[int] = []
        strides: list[int] = []
        for label, size, stride in zip(self.labels, self.sizes, self.strides):
            names = splits.get(label, (label,))
            known = 1
            unknown: str | None = None
            for n in names:
                if n in constraints:
                    known *= constraints[n]
                elif unknown is None:
                    unknown = n
                else:
                    raise ValueError(f"cannot infer sizes of both {unknown!r} and {n!r}; give one")
            if unknown is not None:
                q, r = divmod(size, known) if known else (0, 1)
                if r:
                    raise ValueError(f"dimension {label!r} of size {size} is not divisible by {known}")
                constraints[unknown] = q
            elif known != size:
                raise ValueError(f"dimension {label!r} of size {size} does not split into {known}")
            new_sizes = [constraints.pop(n) for n in names]
            acc = list(itertools.accumulate(reversed(new_sizes), operator.mul, initial=stride))
            new_strides = list(reversed(acc[:-1]))
            for n in names:
                if n in labels:
                    raise ValueError(f"duplicate dimension name {n!r}")
            labels.extend(names)
            sizes.extend(new_sizes)
            strides.extend(new_strides)
        if constraints:
            raise ValueError(f"unused size constraints: {sorted(constraints)}")
        return Shape(labels, self.offset, sizes, strides)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Shape):
            return NotImplemented
        return self.labels == other.labels and self.ranks() == other.ranks()

    def __hash__(self) -> int:
        return hash((self.labels, self.sizes, self.ranks()))

    def __repr__(self) -> str:
        return f"Shape({dict(zip(self.labels, self.sizes))!r}, offset={self.offset}, strides={self.strides})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Shape, (self.labels, self.offset, self.sizes, self.strides))


def _dense_strides(sizes: Sequence[int]) -> list[int]:
    acc = list(itertools.accumulate(reversed(list(sizes)), operator.mul, initial=1))
    return list(reversed(acc[:-1]))


class MeshTrait:
    """Mixin: the mesh operations (slice, flatten, rename, split, extent, size, sizes) over ``_shape``.

    Subclasses define ``_shape`` and ``_new_with_shape``; every operation returns the
    subclass's own type, so a generated ``TrainerMesh`` stays a ``TrainerMesh``.
    """

    _shape: Shape

    def _new_with_shape(self, shape: Shape) -> Self:
        raise NotImplementedError

    def slice(self, **kwargs: int | slice) -> Self:
        """Select along named dimensions: an int drops it, a ``slice`` keeps and renumbers it."""
        return self._new_with_shape(self._shape.slice(**kwargs))

    def flatten(self, name: str) -> Self:
        """All dimensions as one dimension ``name`` (the mesh must be dense)."""
        return self._new_with_shape(self._shape.flatten(name))

    def rename(self, **kwargs: str) -> Self:
        """Rename dimensions: ``rename(hosts="dp")``."""
        return self._new_with_shape(self._shape.rename(**kwargs))

    def split(self, **kwargs: Any) -> Self:
        """Split dimensions: ``split(gpus=("dp", "tp"), tp=2)``."""
        return self._new_with_shape(self._shape.split(**kwargs))

    @property
    def extent(self) -> Extent:
        """Sizes of the mesh's named dimensions."""
        return self._shape.extent

    def size(self, dim: str | Sequence[str] | None = None) -> int:
        """The number of ranks of the mesh, or along some of its dimensions (Monarch's ``size``).

        Args:
            dim: None for every rank of the mesh; a label for the size of that dimension; a
                sequence of labels for the product of their sizes (1 for an empty sequence).

        Returns:
            A count of ranks.

        Raises:
            KeyError: a label that is not a dimension of this mesh.
        """
        shape = self._shape
        if dim is None:
            return len(shape)
        if isinstance(dim, str):
            try:
                return shape.sizes[shape.labels.index(dim)]
            except ValueError:
                raise KeyError(f"{self!r} has no dimension {dim!r}; its dimensions are {list(shape.labels)}") from None
        n = 1
        for d in dim:
            n *= self.size(d)
        return n

    @property
    def sizes(self) -> dict[str, int]:
        """Each dimension's size, outermost first: ``{"hosts": 2, "gpus": 4}`` (Monarch's ``sizes``)."""
        return dict(zip(self._shape.labels, self._shape.sizes))

    def __len__(self) -> int:
        return len(self._shape)
