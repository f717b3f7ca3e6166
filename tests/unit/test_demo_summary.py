"""`make demo`'s closing summary: every figure beside its bound, and a plain OUT OF BOUNDS where
one is over it (the demo once printed "max 1620 ms" without remarking on the 200 ms contract)."""
from workers.demo_summary import Steps, sequence_gaps, summary


def test_a_figure_over_its_bound_is_said_plainly():
    steps = Steps()
    steps.check(True, "sold", "not sold")
    steps.check(False, "authorized", "no CVC: no authorization")
    lines = summary(steps, [30.0, 40.0, 1620.0], {"A": [{"sequence": 1}, {"sequence": 3}]}, dlq_added=2)
    assert lines[0] == ("Steps that did what they said: 1 of 2 (bound: all) -> OUT OF BOUNDS: "
                        "no CVC: no authorization")
    assert "median 40 ms, p95 1620 ms, max 1620 ms (bound: each under 200 ms, contract section 4)" in lines[1]
    assert "OUT OF BOUNDS: 1 of 3 events took longer than 200 ms" in lines[1]
    assert lines[2].endswith("sequence gaps or repeats: 1 (bound: 0) -> OUT OF BOUNDS: A")
    assert lines[3].endswith("(bound: exactly 1) -> OUT OF BOUNDS")


def test_figures_within_their_bounds_say_so(capsys):
    steps = Steps()
    assert steps.check(True, "250.00 captured", "capture failed")
    assert "ok    250.00 captured" in capsys.readouterr().out
    lines = summary(steps, [20.0, 35.0], {"A": [{"sequence": 1}, {"sequence": 2}], "o": [{}]}, dlq_added=1)
    assert all(line.endswith("within bounds") for line in lines), lines


def test_nothing_measured_is_out_of_bounds_and_gaps_are_per_key():
    assert "OUT OF BOUNDS: no event was read back" in summary(Steps(), [], {}, 1)[1]
    assert sequence_gaps({"A": [{"sequence": 2}, {"sequence": 2}], "B": [{"sequence": 4}, {"sequence": 5}]}) == ["A"]
