"""Per-rank timing (inference/rank_timing.py): sleeps injected into the parts of a stand-in iteration are
found where they were put — a collective's wait moved out of the part that called it — and the parts
never exceed the wall time; the join and the run totals against a hand sum."""

import time

import torch

from cryolens.inference import distributed as dist_mod
from cryolens.inference.rank_timing import PARTS, RankTimer, TimingJoin, joined, totals


def test_sleeps_land_in_their_parts():
    timer = RankTimer()
    with timer.part("estep_s"):
        time.sleep(0.05)
    with timer.part("mstep_s"):
        time.sleep(0.05)
        with dist_mod._collective("a stand-in collective"):  # counted as waiting, not as M-step
            time.sleep(0.3)
    with timer.part("write_s"):
        time.sleep(0.02)
    time.sleep(0.02)  # the schedule's own work: in the wall time only
    s = dict(zip(PARTS, timer.seconds().tolist()))
    assert s["estep_s"] >= 0.05 and s["write_s"] >= 0.02 and s["collective_s"] >= 0.3
    assert 0.05 <= s["mstep_s"] < 0.3  # the 0.3 s wait was taken out
    assert s["estep_s"] + s["mstep_s"] + s["write_s"] + s["collective_s"] <= s["wall_s"]
    assert s["wall_s"] >= 0.44


def test_join_and_totals_match_a_hand_sum():
    """Two iterations on 2 ranks (rows), then one from a resumed 1-rank run: the records are the per-part
    max and each rank's, the totals the sums over the iterations with as many ranks as the last."""
    a = torch.tensor([[1.0, 2, 3, 4, 11], [2, 1, 0, 6, 10]], dtype=torch.float64)
    b = torch.tensor([[0.5, 0, 0, 1, 2], [0.25, 1, 0, 0, 2]], dtype=torch.float64)
    ja = joined(a)
    assert ja["estep_s"] == 2.0 and ja["collective_s"] == 6.0 and ja["wall_s"] == 11.0
    assert ja["per_rank"]["mstep_s"] == [2.0, 1.0]
    hist = [{"timing": joined(a)}, {"no": "timing"}, {"timing": joined(b)}]
    t = totals(hist)
    assert t["per_rank"]["estep_s"] == [1.5, 2.25] and t["estep_s"] == 2.25
    assert t["per_rank"]["wall_s"] == [13.0, 12.0] and t["wall_s"] == 13.0
    one = totals(hist + [{"timing": joined(b[:1])}])  # resumed on 1 rank: its iterations only
    assert one["per_rank"]["estep_s"] == [0.5]
    assert totals([{"no": "timing"}]) == {}


def test_one_process_gather_is_the_values():
    wait = dist_mod.start_gather(torch.tensor([1.0, 2.0]))
    assert torch.equal(wait(), torch.tensor([[1.0, 2.0]], dtype=torch.float64))


def test_timing_join_fills_the_started_iterations_record():
    """One process: the record of the iteration started goes where finish puts it, once."""
    join, hist = TimingJoin(), [{}, {}]
    timer = RankTimer()
    with timer.part("write_s"):
        time.sleep(0.01)
    join.start(timer)
    join.finish(hist, back=2)
    join.finish(hist)  # nothing started since: nothing to put
    assert "timing" not in hist[1] and hist[0]["timing"]["per_rank"]["write_s"][0] >= 0.01
    assert hist[0]["timing"]["write_s"] <= hist[0]["timing"]["wall_s"]
