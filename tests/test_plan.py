"""plan_session: which task records run now and what each waits on (rules in its docstring)."""
from __future__ import annotations

import uuid

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.ledger import JobRecord
from hpcpipe.plan import plan_session, topological

EID = str(uuid.uuid4())


def deck_of(*specs):
    """``(name, status, [parent names], level)`` -> task records with ids; parents before children."""
    ids = {spec[0]: str(uuid.uuid4()) for spec in specs}
    deck = []
    for name, status, parents, *level in specs:
        deck.append({"id": ids[name], "name": name, "status": status, "session": EID,
                     "parents": [ids[p] for p in parents], "level": level[0] if level else 0,
                     "priority": 30})
    return deck


def job(task, state="RUNNING", job_id="1234"):
    return JobRecord(task_id=task["id"], session=EID, task_name=task["name"], run_id="run1",
                     backend="slurm", job_id=job_id, array_index=None, state=state, reason=None,
                     submitted=None, updated=None)


def names(items):
    return [i.task["name"] if hasattr(i, "task") else i[0]["name"] for i in items]


#   A -> C -> D <- B ;  E (alone)
def graph(**statuses):
    base = {"A": "Waiting", "B": "Waiting", "C": "Waiting", "D": "Waiting", "E": "Waiting"}
    base.update(statuses)
    deck = deck_of(("A", base["A"], [], 0), ("B", base["B"], [], 0), ("C", base["C"], ["A"], 1),
                   ("D", base["D"], ["C", "B"], 2), ("E", base["E"], [], 0))
    return deck, {t["name"]: t for t in deck}


def test_everything_waiting_is_planned_with_in_plan_dependencies():
    deck, t = graph()
    plan = plan_session(deck, EID)
    assert sorted(names(plan.items)) == ["A", "B", "C", "D", "E"]
    order = names(plan.items)
    assert order.index("A") < order.index("C") < order.index("D") and order.index("B") < order.index("D")
    deps = {i.task["name"]: i.parents_in_plan for i in plan.items}
    assert deps == {"A": [], "B": [], "C": [t["A"]["id"]], "D": [t["C"]["id"], t["B"]["id"]], "E": []}
    assert plan.held == [] and plan.skipped == []
    assert bool(plan)


@pytest.mark.parametrize("done", ["Complete", "Incomplete"])
def test_done_parents_are_no_dependency(done):
    deck, t = graph(A=done, B=done)
    plan = plan_session(deck, EID)
    assert set(names(plan.items)) == {"C", "D", "E"}
    deps = {i.task["name"]: (i.parents_in_plan, i.parents_live) for i in plan.items}
    assert deps["C"] == ([], [])
    assert deps["D"] == ([t["C"]["id"]], [])  # B is done: only C, which is in the plan


@pytest.mark.parametrize("bad", ["Errored", "Held", "Empty", "Abandoned", "Started"])
def test_blocked_parent_holds_the_task_and_its_descendants(bad):
    deck, _ = graph(A=bad)
    plan = plan_session(deck, EID)
    assert set(names(plan.items)) == {"B", "E"}
    held = dict((task["name"], reason) for task, reason in plan.held)
    assert set(held) == {"C", "D"}
    assert "A" in held["C"] and bad in held["C"]
    assert "C" in held["D"]  # held because its parent cannot run


def test_one_blocked_parent_out_of_two_is_enough_to_hold():
    deck, _ = graph(A="Complete", C="Complete", B="Errored")
    plan = plan_session(deck, EID)
    assert names(plan.held) == ["D"]
    assert set(names(plan.items)) == {"E"}


def test_live_jobs_are_skipped_and_become_dependencies():
    deck, t = graph(A="Started")
    live = {t["A"]["id"]: job(t["A"], job_id="777")}
    plan = plan_session(deck, EID, live_jobs=live)
    assert set(names(plan.items)) == {"B", "C", "D", "E"}
    c = next(i for i in plan.items if i.task["name"] == "C")
    assert c.parents_in_plan == [] and [j.job_id for j in c.parents_live] == ["777"]


def test_a_waiting_task_with_a_live_job_is_not_submitted_twice():
    deck, t = graph()
    live = {t["A"]["id"]: job(t["A"], state="PENDING", job_id="42")}
    plan = plan_session(deck, EID, live_jobs=live)
    assert names(plan.skipped) == ["A"]
    assert "42" in plan.skipped[0][1]
    assert "A" not in names(plan.items)
    c = next(i for i in plan.items if i.task["name"] == "C")
    assert [j.job_id for j in c.parents_live] == ["42"]


def test_names_filter():
    deck, t = graph(A="Complete")
    plan = plan_session(deck, EID, names=["C", "E"])
    assert set(names(plan.items)) == {"C", "E"}
    assert plan.held == []


def test_names_filter_leaves_an_unplanned_waiting_parent_blocking():
    deck, _ = graph()
    plan = plan_session(deck, EID, names=["C"])
    assert names(plan.items) == []
    assert names(plan.held) == ["C"]
    assert "Waiting" in plan.held[0][1]
    assert not plan


def test_statuses_select_what_is_planned():
    deck, t = graph(A="Errored", B="Complete", C="Held", D="Held", E="Complete")
    plan = plan_session(deck, EID, statuses=["Errored", "Held"])
    assert names(plan.items) == ["A", "C", "D"]
    deps = {i.task["name"]: i.parents_in_plan for i in plan.items}
    assert deps == {"A": [], "C": [t["A"]["id"]], "D": [t["C"]["id"]]}
    with pytest.raises(BadInput):
        plan_session(deck, EID, statuses=["held"])


def test_parent_from_another_session_holds_the_task():
    deck, t = graph()
    t["C"]["parents"] = [str(uuid.uuid4())]
    plan = plan_session(deck, EID)
    assert set(names(plan.held)) == {"C", "D"}


def test_stored_levels_are_not_trusted_for_order():
    # levels written wrong in the store: the child claims level 0, its parent level 5
    deck = deck_of(("Child", "Waiting", ["Parent"], 0), ("Parent", "Waiting", [], 5))
    deck = [deck[0], deck[1]]
    plan = plan_session(deck, EID)
    assert names(plan.items) == ["Parent", "Child"]
    assert plan.items[1].parents_in_plan == [plan.items[0].id]


def test_topological_refuses_a_stored_cycle():
    deck = deck_of(("A", "Waiting", []), ("B", "Waiting", ["A"]))
    deck[0]["parents"] = [deck[1]["id"]]
    with pytest.raises(ValueError, match="cycle"):
        topological(deck)
