"""Batch plans: each forget item once per epoch; retain samples differ by step; under torchrun
the ranks take slices of one process's larger batches."""

from soulcli.engine.sampling import epoch_batches, plan_unlearning


def test_every_forget_item_once_per_epoch():
    plan = plan_unlearning(n_forget=23, n_retain=100, batch_size=4, retain_batch_size=4, epochs=3,
                           seed=1, use_retain=True)
    per_epoch = 6  # ceil(23 / 4)
    assert len(plan) == 3 * per_epoch
    for e in range(3):
        seen = [i for st in plan[e * per_epoch:(e + 1) * per_epoch] for i in st.forget]
        assert sorted(seen) == list(range(23))
    assert [st.forget for st in plan[:per_epoch]] != [st.forget for st in plan[per_epoch:2 * per_epoch]]


def test_retain_samples_differ_across_steps_and_ranks():
    kw = dict(n_forget=40, n_retain=1000, batch_size=4, retain_batch_size=8, epochs=1, seed=0, use_retain=True)
    r0 = plan_unlearning(**kw, rank=0, world_size=2)
    r1 = plan_unlearning(**kw, rank=1, world_size=2)
    assert all(len(set(st.retain)) == 8 for st in r0)
    assert len({tuple(st.retain) for st in r0}) == len(r0)  # differs across steps
    assert all(set(a.retain).isdisjoint(b.retain) for a, b in zip(r0, r1))  # slices of one sample
    f0 = {i for st in r0 for i in st.forget}
    f1 = {i for st in r1 for i in st.forget}
    assert f0.isdisjoint(f1) and f0 | f1 == set(range(40))  # each rank its own shard


def test_plans_are_deterministic_and_max_steps_truncates():
    a = plan_unlearning(10, 50, 3, 3, 2, 7, True)
    b = plan_unlearning(10, 50, 3, 3, 2, 7, True)
    assert a == b
    assert len(plan_unlearning(10, 50, 3, 3, 2, 7, True, max_steps=5)) == 5
    assert all(st.retain is None for st in plan_unlearning(10, 50, 3, 3, 1, 7, False))


def test_epoch_batches_cover_each_epoch():
    batches = epoch_batches(10, 4, 2, 0)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(i for b in batches[:3] for i in b) == list(range(10))


def test_ranks_take_equal_steps_when_items_do_not_divide():
    kw = dict(n_forget=9, n_retain=30, batch_size=2, retain_batch_size=2, epochs=2, seed=3, use_retain=True)
    plans = [plan_unlearning(**kw, rank=r, world_size=2) for r in range(2)]
    assert len(plans[0]) == len(plans[1]) == 2 * 3  # 10 wrapped items / 2 ranks / batch 2 -> 3 steps per epoch
    first_epoch = [i for p in plans for st in p[:3] for i in st.forget]
    assert set(first_epoch) == set(range(9)) and len(first_epoch) == 10


def test_ranks_slice_the_batches_of_one_process():
    """2 ranks with batch b: rank 0's rows then rank 1's are the one-process batch of 2b (forget
    and retain), so 2 ranks can reproduce that process; finetuning's plan likewise."""
    kw = dict(n_forget=16, n_retain=30, epochs=2, seed=5, use_retain=True)
    one = plan_unlearning(**kw, batch_size=4, retain_batch_size=6)
    ranks = [plan_unlearning(**kw, batch_size=2, retain_batch_size=3, rank=r, world_size=2) for r in (0, 1)]
    assert [st.forget for st in one] == [a.forget + b.forget for a, b in zip(*ranks)]
    assert [st.retain for st in one] == [a.retain + b.retain for a, b in zip(*ranks)]
    halves = [epoch_batches(12, 3, 2, 4, rank=r, world_size=2) for r in (0, 1)]
    assert epoch_batches(12, 6, 2, 4) == [a + b for a, b in zip(*halves)]
