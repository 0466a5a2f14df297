"""Token bucket arithmetic."""
import pytest
from hypothesis import given, settings, strategies as st

from kvmm.quota.bucket import NS_PER_MS, RateLimiter, TokenBucket


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


def bucket(size, refill_ms, burst=0):
    clock = Clock()
    return TokenBucket(size, refill_ms, burst, clock=clock), clock


def test_starts_full_and_refills_linearly():
    b, clock = bucket(1000, 100)
    assert b.budget == 1000
    assert b.can_take(1000)
    b.take(1000)
    assert b.budget == 0
    clock.now += 50 * NS_PER_MS
    assert b.budget == 500
    clock.now += 500 * NS_PER_MS
    assert b.budget == 1000                      # capped at size


def test_burst_is_spent_first_and_never_refills():
    b, clock = bucket(100, 10, burst=50)
    b.take(30)
    assert b.one_time_burst == 20 and b.budget == 100
    b.take(70)
    assert b.one_time_burst == 0 and b.budget == 50
    clock.now += 10 ** 12
    assert b.one_time_burst == 0 and b.budget == 100


def test_oversized_request_allowed_once_from_a_full_bucket_then_deficit():
    b, clock = bucket(100, 100)
    assert b.can_take(250)
    b.take(250)
    assert b.budget == 0
    assert not b.can_take(1)
    # deficit of 150 tokens plus one more: 151 tokens at 1 token/ms
    assert b.wait_ns(1) == 151 * NS_PER_MS
    clock.now += 151 * NS_PER_MS
    assert b.can_take(1)


def test_wait_ns_is_exact():
    b, clock = bucket(1000, 1000)                 # one token per ms
    b.take(1000)
    w = b.wait_ns(10)
    assert w == 10 * NS_PER_MS
    clock.now += w - 1
    assert not b.can_take(10)
    clock.now += 1
    assert b.can_take(10)


@pytest.mark.parametrize("args", [(0, 100), (100, 0), (-1, 10), (10, -5), (10, 10, -1),
                                  ("10", 10), (1.5, 10)])
def test_bad_parameters(args):
    with pytest.raises(ValueError):
        TokenBucket(*args)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 10 ** 9), refill=st.integers(1, 10 ** 5),
       burst=st.integers(0, 10 ** 6),
       steps=st.lists(st.tuples(st.integers(0, 10 ** 10), st.integers(0, 2 * 10 ** 9)),
                      max_size=60))
def test_invariants(size, refill, burst, steps):
    b, clock = bucket(size, refill, burst)
    for dt, want in steps:
        clock.now += dt
        if b.can_take(want):
            b.take(want)
        assert 0 <= b.budget <= size
        assert 0 <= b.one_time_burst <= burst
        assert b.wait_ns(min(want, size)) >= 0


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 10 ** 6), refill=st.integers(1, 10 ** 4),
       steps=st.lists(st.integers(1, 10 ** 9), min_size=1, max_size=50))
def test_refill_exact_over_arbitrary_steps(size, refill, steps):
    b, clock = bucket(size, refill)
    b.take(size)
    total = 0
    for dt in steps:
        clock.now += dt
        total += dt
        expected = min(size, total * size // (refill * NS_PER_MS))
        assert b.budget == expected


@settings(max_examples=30, deadline=None)
@given(size=st.integers(100, 10 ** 7), refill=st.integers(1, 1000),
       share=st.integers(1, 100))
def test_no_drift_when_driven_flat_out(size, refill, share):
    """A consumer that sleeps exactly wait_ns between attempts gets the configured
    rate: over a long simulated run, what passed is within one request (plus the
    initial full bucket) of size/refill_time."""
    request = max(1, size * share // 100)       # 1% to 100% of the bucket
    b, clock = bucket(size, refill)
    duration = 1000 * refill * NS_PER_MS          # 1000 refill periods
    passed = 0
    while clock.now < duration:
        if b.can_take(request):
            b.take(request)
            passed += request
        else:
            clock.now += max(1, b.wait_ns(request))
    ideal = size + clock.now * size // (refill * NS_PER_MS)
    assert ideal - 2 * request <= passed <= ideal


def test_limiter_all_or_nothing_and_counters():
    clock = Clock()
    bw = TokenBucket(1000, 1000, clock=clock)
    ops = TokenBucket(2, 1000, clock=clock)
    lim = RateLimiter(bw, ops, clock=clock)
    assert lim.try_consume(400) and lim.try_consume(400)
    assert not lim.try_consume(100)              # ops empty; bytes must not be taken
    assert bw.budget == 200
    clock.now += 500 * NS_PER_MS
    assert lim.wait_ns(100) == 0
    assert lim.try_consume(100)
    s = lim.stats()
    assert (s["bytes"], s["ops"], s["throttled_count"]) == (900, 3, 1)
    assert s["throttled_ms"] == pytest.approx(500)


def test_group_parent_caps_children_together():
    clock = Clock()
    group = RateLimiter(TokenBucket(1000, 1000, clock=clock), clock=clock)
    a = RateLimiter(TokenBucket(800, 1000, clock=clock), parents=(group,), clock=clock)
    b = RateLimiter(TokenBucket(800, 1000, clock=clock), parents=(group,), clock=clock)
    assert a.try_consume(600)
    assert not b.try_consume(600)                # b's own bucket is fine, the group is not
    assert b.try_consume(400)
    assert group.stats()["bytes"] == 1000


def test_backoff_emulation():
    clock = Clock()
    lim = RateLimiter(TokenBucket(10, 1, clock=clock), backoff_ns=100 * NS_PER_MS, clock=clock)
    assert lim.try_consume(10)
    assert lim.wait_ns(1) == 100 * NS_PER_MS     # Firecracker-style fixed back-off


def test_update_patch_semantics():
    clock = Clock()
    bw = TokenBucket(10, 1, clock=clock)
    lim = RateLimiter(bw, None, clock=clock)
    lim.update(ops=TokenBucket(5, 1, clock=clock))
    assert lim.bandwidth is bw and lim.ops.size == 5
    lim.update(bandwidth=None)
    assert lim.bandwidth is None and lim.ops is not None


def test_limited_and_bulk_count_follow_the_parents():
    group = RateLimiter()
    lim = RateLimiter(parents=(group,))
    assert not lim.limited()
    lim.count(3, 300)
    assert (lim.ops_passed, lim.bytes_passed, group.ops_passed, group.bytes_passed) == \
        (3, 300, 3, 300)
    group.update(ops=TokenBucket(10, 100))
    assert lim.limited() and group.limited()
    group.update(ops=None)
    assert not lim.limited()
