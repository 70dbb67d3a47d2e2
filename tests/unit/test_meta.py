"""accesspoint.meta: LabelSelector semantics (metav1), set_condition / merge_conditions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from accesspoint.meta import Condition, LabelSelector, condition, merge_conditions, set_condition

LABELS = {"env": "prod", "tier": "gold", "empty": ""}


def sel(**kw: Any) -> LabelSelector:
    return LabelSelector.model_validate(kw)


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),  # empty selector matches everything
        ({"matchLabels": {"env": "prod"}}, True),
        ({"matchLabels": {"env": "prod", "tier": "gold"}}, True),
        ({"matchLabels": {"env": "dev"}}, False),
        ({"matchLabels": {"region": "x"}}, False),
        ({"matchLabels": {"empty": ""}}, True),
        ({"matchLabels": {"missing": ""}}, False),  # absent is not the empty value
        ({"matchExpressions": [expr("env", "In", "prod", "staging")]}, True),
        ({"matchExpressions": [expr("env", "In", "dev")]}, False),
        ({"matchExpressions": [expr("missing", "In", "x")]}, False),
        ({"matchExpressions": [expr("empty", "In", "")]}, True),
        ({"matchExpressions": [expr("env", "NotIn", "dev")]}, True),
        ({"matchExpressions": [expr("env", "NotIn", "prod")]}, False),
        ({"matchExpressions": [expr("missing", "NotIn", "x")]}, True),  # metav1: absent key satisfies NotIn
        ({"matchExpressions": [expr("env", "Exists")]}, True),
        ({"matchExpressions": [expr("empty", "Exists")]}, True),
        ({"matchExpressions": [expr("missing", "Exists")]}, False),
        ({"matchExpressions": [expr("missing", "DoesNotExist")]}, True),
        ({"matchExpressions": [expr("env", "DoesNotExist")]}, False),
        # everything is ANDed
        ({"matchLabels": {"env": "prod"}, "matchExpressions": [expr("tier", "In", "gold")]}, True),
        ({"matchLabels": {"env": "prod"}, "matchExpressions": [expr("tier", "In", "silver")]}, False),
        ({"matchLabels": {"env": "dev"}, "matchExpressions": [expr("tier", "In", "gold")]}, False),
        ({"matchExpressions": [expr("env", "Exists"), expr("missing", "DoesNotExist")]}, True),
        ({"matchExpressions": [expr("env", "Exists"), expr("tier", "DoesNotExist")]}, False),
    ],
)
def test_label_selector(selector: dict[str, Any], expected: bool) -> None:
    assert sel(**selector).matches(LABELS) is expected


def test_selector_on_no_labels() -> None:
    assert sel().matches({})
    assert not sel(matchLabels={"a": "b"}).matches({})
    assert sel(matchExpressions=[expr("a", "NotIn", "b"), expr("a", "DoesNotExist")]).matches({})


@pytest.mark.parametrize(
    "bad",
    [
        {"matchExpressions": [expr("env", "Equals", "prod")]},
        {"matchExpressions": [{"key": "", "operator": "Exists"}]},
        {"matchLabel": {"a": "b"}},  # unknown field
    ],
)
def test_selector_rejects_bad_input(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LabelSelector.model_validate(bad)


def test_selector_wire_form_is_camel_case() -> None:
    s = sel(matchLabels={"a": "b"}, matchExpressions=[expr("c", "Exists")])
    assert s.wire() == {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "c", "operator": "Exists",
                                                                             "values": []}]}


@given(st.dictionaries(st.sampled_from("abcd"), st.sampled_from(["x", "y", ""]), max_size=4),
       st.dictionaries(st.sampled_from("abcd"), st.sampled_from(["x", "y", ""]), max_size=3))
def test_match_labels_is_a_subset_test(labels: dict[str, str], wanted: dict[str, str]) -> None:
    assert sel(matchLabels=wanted).matches(labels) is (wanted.items() <= labels.items())


@given(st.dictionaries(st.sampled_from("abcd"), st.sampled_from(["x", "y"]), max_size=4),
       st.sampled_from("abcd"), st.lists(st.sampled_from(["x", "y", "z"]), max_size=3))
def test_in_and_notin_are_complements_when_the_key_is_present(
    labels: dict[str, str], key: str, values: list[str]
) -> None:
    in_ = sel(matchExpressions=[expr(key, "In", *values)]).matches(labels)
    not_in = sel(matchExpressions=[expr(key, "NotIn", *values)]).matches(labels)
    exists = sel(matchExpressions=[expr(key, "Exists")]).matches(labels)
    absent = sel(matchExpressions=[expr(key, "DoesNotExist")]).matches(labels)
    assert exists is not absent
    if exists:
        assert in_ is not not_in
    else:
        assert (in_, not_in) == (False, True)


# ---- conditions -----------------------------------------------------------------------------

T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z"


def c(type_: str, status: str, reason: str = "R", message: str = "", since: str | None = None,
      generation: int | None = None) -> Condition:
    return Condition.model_validate({"type": type_, "status": status, "reason": reason, "message": message,
                                     "lastTransitionTime": since, "observedGeneration": generation})


def test_set_condition_adds_a_new_type_with_now() -> None:
    out = set_condition([c("A", "True", since=T1)], c("B", "False"), T2)
    assert [(x.type, x.last_transition_time) for x in out] == [("A", T1), ("B", T2)]


def test_set_condition_keeps_the_time_when_status_is_unchanged() -> None:
    out = set_condition([c("A", "True", "Old", "old", since=T1, generation=1)],
                        c("A", "True", "New", "new", generation=2), T2)
    assert out == [c("A", "True", "New", "new", since=T1, generation=2)]


@pytest.mark.parametrize(("old", "new"), [("True", "False"), ("False", "Unknown"), ("Unknown", "True")])
def test_set_condition_moves_the_time_when_status_flips(old: str, new: str) -> None:
    out = set_condition([c("A", old, since=T1)], c("A", new), T2)
    assert out == [c("A", new, since=T2)]


def test_set_condition_fills_a_missing_time_and_ignores_the_callers_time() -> None:
    assert set_condition([c("A", "True")], c("A", "True"), T2)[0].last_transition_time == T2
    assert set_condition([], c("A", "True", since="1999-01-01T00:00:00Z"), T2)[0].last_transition_time == T2


def test_set_condition_does_not_mutate_its_input() -> None:
    existing = [c("A", "True", since=T1)]
    new = c("A", "False")
    set_condition(existing, new, T2)
    assert existing == [c("A", "True", since=T1)] and new.last_transition_time is None


def test_merge_conditions_orders_by_fresh_and_drops_the_rest() -> None:
    previous = [c("Ready", "True", since=T1), c("Stale", "True", since=T1), c("Accepted", "True", since=T1)]
    fresh = [c("Accepted", "True"), c("Placed", "False"), c("Ready", "False")]
    out = merge_conditions(previous, fresh, T2)
    assert [(x.type, x.status, x.last_transition_time) for x in out] == [
        ("Accepted", "True", T1), ("Placed", "False", T2), ("Ready", "False", T2)]


def test_merge_is_idempotent_so_a_no_op_is_equal() -> None:
    fresh = [c("Accepted", "True", "Valid", "ok", generation=4), c("Ready", "False", "NotReady", "1/2")]
    once = merge_conditions([], fresh, T1)
    twice = merge_conditions(once, fresh, T2)
    assert once == twice
    assert all(x.last_transition_time == T1 for x in twice)


def test_condition_lookup() -> None:
    conds = [c("A", "True"), c("B", "False")]
    found = condition(conds, "B")
    assert found is not None and found.status == "False"
    assert condition(conds, "C") is None


def test_condition_reason_is_required_and_wire_is_metav1() -> None:
    with pytest.raises(ValidationError):
        c("A", "True", reason="")
    with pytest.raises(ValidationError):
        c("A", "Maybe")
    assert c("A", "True", "Why", "msg", since=T1, generation=3).wire() == {
        "type": "A", "status": "True", "reason": "Why", "message": "msg",
        "observedGeneration": 3, "lastTransitionTime": T1}
