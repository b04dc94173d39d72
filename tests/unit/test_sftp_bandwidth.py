"""The token bucket, on a fake clock."""

import threading

import pytest

from zsagent.sftp.bandwidth import TokenBucket, bucket_for


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_first_burst_is_free_then_the_rate_holds():
    clock = FakeClock()
    bucket = TokenBucket(1000, 500, clock=clock, sleep=clock.sleep)
    bucket.take(500)
    assert clock.now == 0
    for _ in range(10):
        bucket.take(100)
    assert clock.now == pytest.approx(1.0)  # 1000 bytes beyond the burst at 1000 B/s


def test_a_request_larger_than_the_burst_leaves_debt():
    clock = FakeClock()
    bucket = TokenBucket(1000, 100, clock=clock, sleep=clock.sleep)
    bucket.take(2100)
    assert clock.now == pytest.approx(2.0)
    bucket.take(0)
    assert clock.now == pytest.approx(2.0)


def test_idle_time_refills_only_up_to_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000, 200, clock=clock, sleep=clock.sleep)
    clock.now = 100.0
    bucket.take(1200)
    assert clock.now == pytest.approx(101.0)


def test_average_rate_over_many_threads():
    clock = FakeClock()
    lock = threading.Lock()

    def sleep(seconds):
        with lock:
            clock.slept.append(seconds)

    bucket = TokenBucket(1000, 100, clock=clock, sleep=sleep)
    threads = [threading.Thread(target=lambda: [bucket.take(50) for _ in range(20)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # with time frozen, the reservations queue up: the last one waits for all of them
    assert max(clock.slept) == pytest.approx((4 * 20 * 50 - 100) / 1000)


def test_bucket_for_settings():
    assert bucket_for(None, 261120) is None
    assert bucket_for(4 << 20, 261120).burst_bytes == 261120
    assert bucket_for(100 << 20, 261120).burst_bytes == (100 << 20) // 20
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
