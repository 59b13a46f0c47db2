"""Shared by the timing benchmarks: the median wall time of a call, which shrugs off the odd
interruption that a mean would absorb."""
import time


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]
