"""ValueMesh: the per-rank results of a ``call()``, shaped like the (sliced) mesh it was sent to.

Semantics follow Meta Monarch's ``ValueMesh`` (``item``, ``items``, ``values``, ``slice``,
``flatten``; iteration yields ``(Point, value)`` pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from .shape import MeshTrait, Point, Shape

__all__ = ["ValueMesh"]

R = TypeVar("R")


class ValueMesh(MeshTrait, Generic[R]):
    """One value per point of a shape.

    Args:
        shape: the shape of the mesh the call went to; ``values[i]`` belongs to its i-th point.
        values: row-major values.
    """

    def __init__(self, shape: Shape, values: Sequence[R]) -> None:
        if len(shape) != len(values):
            raise ValueError(f"ValueMesh of {len(shape)} points given {len(values)} values")
        self._shape = shape
        # keyed by global rank so slicing can look values up
        self._by_rank: dict[int, R] = dict(zip(shape.ranks(), values))

    def _new_with_shape(self, shape: Shape) -> ValueMesh[R]:
        return ValueMesh(shape, [self._by_rank[r] for r in shape.ranks()])

    def item(self, **kwargs: int) -> R:
        """The value at the point given by coordinates; no arguments on a one-point mesh.

        Raises:
            KeyError: a dimension is missing or unknown.
            ValueError: no coordinates given but the mesh has more than one point.
        """
        if not kwargs:
            if len(self._shape) != 1:
                raise ValueError(f"item() without coordinates on a ValueMesh of {len(self._shape)} values")
            return self._by_rank[self._shape.ranks()[0]]
        labels = self._shape.labels
        unknown = set(kwargs) - set(labels)
        if unknown:
            raise KeyError(f"unknown dimensions {sorted(unknown)}; this mesh has {list(labels)}")
        missing = [lb for lb in labels if lb not in kwargs]
        if missing:
            raise KeyError(f"item() needs a coordinate for {missing}")
        sub = self._shape.slice(**kwargs)
        return self._by_rank[sub.ranks()[0]]

    def items(self) -> Iterable[tuple[Point, R]]:
        """``(point, value)`` for every point, row-major."""
        extent = self._shape.extent
        return [(Point(i, extent), self._by_rank[r]) for i, r in enumerate(self._shape.ranks())]

    def values(self) -> Iterable[R]:
        """Every value, row-major."""
        return [self._by_rank[r] for r in self._shape.ranks()]

    def __iter__(self) -> Iterator[tuple[Point, R]]:
        return iter(self.items())

    def __repr__(self) -> str:
        return f"ValueMesh({dict(zip(self._shape.labels, self._shape.sizes))!r}, values={list(self.values())!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValueMesh):
            return NotImplemented
        return self._shape == other._shape and list(self.values()) == list(other.values())

    __hash__ = None  # type: ignore[assignment]  # mutable-by-contents container, like list

    def __reduce__(self) -> tuple[Any, ...]:
        return (ValueMesh, (self._shape, list(self.values())))
