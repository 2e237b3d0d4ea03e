"""Patterns for selective receive."""

from __future__ import annotations

from pybeam import ANY
from pybeam.pattern import compile_pattern


def test_any_matches_everything() -> None:
    m = compile_pattern(ANY)
    assert m(None) and m(1) and m(("x",))


def test_class_matches_instances() -> None:
    m = compile_pattern(int)
    assert m(3) and not m("3")


def test_literal_matches_equal_values() -> None:
    m = compile_pattern("stop")
    assert m("stop") and not m("go") and not m(("stop",))


def test_tuple_pattern_matches_shape_and_items() -> None:
    m = compile_pattern(("DOWN", ANY, str, lambda x: x > 1))
    assert m(("DOWN", object(), "process", 2))
    assert not m(("DOWN", 1, "process", 1))
    assert not m(("DOWN", 1, 2, 2))
    assert not m(("DOWN", 1, "process"))
    assert not m(["DOWN", 1, "process", 2])


def test_nested_and_list_patterns() -> None:
    m = compile_pattern(("reply", ["a", ANY], ("n", int)))
    assert m(("reply", ["a", 9], ("n", 1)))
    assert not m(("reply", ("a", 9), ("n", 1)))
    assert not m(("reply", ["a", 9], ("n", "1")))


def test_dict_pattern_needs_its_keys_only() -> None:
    m = compile_pattern({"op": "get", "key": ANY})
    assert m({"op": "get", "key": 1, "extra": True})
    assert not m({"op": "get"})
    assert not m({"op": "put", "key": 1})
    assert not m(("op", "get"))


def test_predicate_is_used_as_is() -> None:
    m = compile_pattern(lambda x: x == 5)
    assert m(5) and not m(4)
