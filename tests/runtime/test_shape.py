from __future__ import annotations

import pytest
from monarch._core.shape import Extent, Point, Shape
from monarch._core.value_mesh import ValueMesh


def test_integer_slice_drops_dimension_and_slice_keeps_and_renumbers() -> None:
    s = Shape.dense({"hosts": 2, "gpus": 4})
    a = s.slice(hosts=1)
    assert a.labels == ("gpus",) and a.ranks() == (4, 5, 6, 7)
    b = s.slice(gpus=slice(1, 4, 2))
    assert b.labels == ("hosts", "gpus") and b.sizes == (2, 2)
    assert b.ranks() == (1, 3, 5, 7)
    c = b.slice(gpus=1)
    assert c.ranks() == (3, 7)


def test_slice_errors_name_the_problem() -> None:
    s = Shape.dense({"gpus": 4})
    with pytest.raises(ValueError, match="unknown dimension 'hosts'"):
        s.slice(hosts=0)
    with pytest.raises(IndexError):
        s.slice(gpus=4)


def test_negative_index_counts_from_the_end() -> None:
    assert Shape.dense({"gpus": 4}).slice(gpus=-1).ranks() == (3,)


def test_flatten_rename_split() -> None:
    s = Shape.dense({"hosts": 2, "gpus": 4})
    f = s.flatten("all")
    assert f.labels == ("all",) and f.ranks() == tuple(range(8))
    r = s.rename(hosts="dp")
    assert r.labels == ("dp", "gpus")
    sp = s.split(gpus=("tp", "cp"), cp=2)
    assert sp.labels == ("hosts", "tp", "cp") and sp.sizes == (2, 2, 2)
    assert sp.slice(hosts=1, tp=1).ranks() == (6, 7)
    with pytest.raises(ValueError):
        s.slice(gpus=slice(0, 4, 2)).flatten("x")
    with pytest.raises(ValueError):
        s.split(gpus=("a", "b"), b=3)


def test_point_coordinates_and_extent_mapping() -> None:
    e = Extent(["hosts", "gpus"], [2, 4])
    p = Point(6, e)
    assert dict(p) == {"hosts": 1, "gpus": 2}
    assert e.rank_of(p) == 6
    assert dict(e) == {"hosts": 2, "gpus": 4} and e.nelements == 8


def test_value_mesh_item_items_values_and_slice() -> None:
    s = Shape.dense({"hosts": 2, "gpus": 2})
    vm = ValueMesh(s, ["a", "b", "c", "d"])
    assert vm.item(hosts=1, gpus=0) == "c"
    assert list(vm.values()) == ["a", "b", "c", "d"]
    assert [(dict(p), v) for p, v in vm.items()][1] == ({"hosts": 0, "gpus": 1}, "b")
    sub = vm.slice(gpus=1)
    assert list(sub.values()) == ["b", "d"]
    assert vm.slice(hosts=0, gpus=1).item() == "b"
    with pytest.raises(ValueError):
        vm.item()
    assert len(vm.flatten("x")) == 4
