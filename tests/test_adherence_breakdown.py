"""The evaluate stage's adherence breakdown by the concept's number of training pictures."""

import pytest
import torch

from condiff.evaluation.adherence import adherence_by_training_count


def test_breakdown_splits_hits_by_training_count_and_counts_shared_misses():
    gen = torch.tensor([0, 9, 3, 7, 100, 1, 4, 5])
    real = torch.tensor([0, 0, 8, 2, 50, 0, 0, 9])
    counts = torch.tensor([0, 0, 1, 2, 4, 4, 12, 30])
    out = adherence_by_training_count(gen, real, counts)
    assert [out[k]["prompts"] for k in ("0 training pictures", "1-2 training pictures", "3-5 training pictures",
                                        "6-10 training pictures", "11+ training pictures")] == [2, 2, 2, 0, 2]
    assert out["0 training pictures"]["generated"]["mean"] == 0.5 and out["0 training pictures"]["real"]["mean"] == 1.0
    assert out["1-2 training pictures"]["generated"]["mean"] == 0.5 and out["1-2 training pictures"]["real"]["mean"] == 0.5
    assert out["11+ training pictures"]["generated"]["mean"] == 0.5 and out["11+ training pictures"]["real"]["mean"] == 0.5
    lo, hi = out["0 training pictures"]["generated"]["ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert "generated" not in out["6-10 training pictures"]
    # generated misses (rank ≥ 5): 9, 7, 100, 5 → 4; real misses: 8, 50, 9 → 3; both: 100/50 and 5/9 → 2
    assert out["misses"] == {"generated": 4, "real": 3, "both": 2}


def test_breakdown_of_one_prompt_gives_a_rate_without_interval_and_custom_buckets_apply():
    out = adherence_by_training_count(torch.tensor([2]), torch.tensor([6]), torch.tensor([3]),
                                      buckets=((0, 3), (4, None)), top=3)
    assert out["0-3 training pictures"] == {"prompts": 1, "generated": {"mean": 1.0, "ci95": None},
                                            "real": {"mean": 0.0, "ci95": None}}
    assert out["4+ training pictures"] == {"prompts": 0}


def test_breakdown_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="equal-length 1-D"):
        adherence_by_training_count(torch.zeros(3), torch.zeros(2), torch.zeros(3))
