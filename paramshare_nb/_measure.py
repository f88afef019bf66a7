"""Planning by measurement, for ``config.planner == "measure"``.

The cost model's throughputs are one machine's, and one constant cannot fit
every size: on a Zen 4 core ``"csr"``'s tiles ran at about 70 GFLOP/s at
batch 1-4 and 44 at batch 128, so ``"auto"`` took 31 us where
``"complement"`` took 13 (S_64, 3 -> 16 channels, batch 1).  Measuring
instead times the strategies that the model rates near the cheapest, on the
first call of a signature and on that call's own arrays, and keeps the
fastest.  Nothing here knows the strategies: the caller gives their
estimates and a way to build each one's runner.
"""

from __future__ import annotations

import math
import threading
import time

#: Candidates whose estimate is within this factor of the cheapest are timed (on the
#: grids of timed cases described in ``_dispatch``'s cost model, the model's choice took
#: at most 2.3x the best one's time).
SPAN = 4.0
#: At most this many candidates, the cheapest estimates first.
MOST = 5
#: Timed rounds, each timing every remaining candidate once in turn: alternating, so
#: that a drift of the machine's speed (up to 2x within a minute on a shared host)
#: falls on all of them alike.
ROUNDS = 5
#: Seconds after which no further round starts (two rounds at least are timed).
BUDGET = 0.25
#: A candidate slower than this factor of the fastest after a round is dropped.
HOPELESS = 3.0
#: The cost model's own choice is kept unless another candidate is this much faster:
#: near-ties are noise, not evidence (C_64, 16 -> 16 channels, batch 64: csr's forward
#: measured 1.05 against materialize's 1.38 ms in one process, 2.70 against 1.84 in the
#: next).
MARGIN = 1.15


def candidates(costs, span=SPAN, most=MOST):
    """The keys of ``costs`` (estimated seconds) within ``span`` of the cheapest,
    cheapest first, at most ``most``."""
    ranked = sorted(costs, key=costs.get)
    bound = span * costs[ranked[0]]
    return [k for k in ranked if costs[k] <= bound][:most]


def fastest(runners, args):
    """The index of the fastest of ``runners`` on ``args``, ``0`` (the cost model's
    choice) unless another is :data:`MARGIN` times faster.

    Each runs once untimed (that call compiles it), then in alternating
    rounds; a runner's time is its fastest round, the one least disturbed by
    the rest of the machine.
    """
    for run in runners:
        run(*args)
    times = [math.inf] * len(runners)
    alive = list(range(len(runners)))
    start = time.perf_counter()
    for rnd in range(ROUNDS):
        for i in alive:
            # timed right after a call of its own: what ran just before changes a call's
            # time (C_16, 1 -> 8 channels, batch 128: "materialize" took 37 us after
            # "scatter", 18 after itself), and which candidate precedes which is an
            # accident of this loop, not of the caller's program
            runners[i](*args)
            t0 = time.perf_counter()
            runners[i](*args)
            times[i] = min(times[i], time.perf_counter() - t0)
        best = min(times)
        alive = [i for i in alive if times[i] <= HOPELESS * best]
        if rnd >= 1 and time.perf_counter() - start > BUDGET:
            break
    best = times.index(min(times))
    return best if times[best] * MARGIN < times[0] else 0


def planned(memo, key, options, build, settle=None):
    """A runner for the fastest of ``options``, measured on its first call.

    ``build(option)`` returns a runner, a function of the call's arrays that
    writes its outputs in full.  A choice already in ``memo[key]`` is built
    at once.  Otherwise the returned runner times every option on its first
    call's arrays (each writes the outputs in turn), stores the winner in
    ``memo[key]``, calls ``settle()`` (to drop what the losers left behind),
    and runs the winner once more, so that the outputs hold its result, as
    they do on every later call.  Threads that call it meanwhile wait for
    that one measurement, and a choice another runner stored for ``key``
    first is taken as it is.
    """
    hit = memo.get(key)
    if hit is not None or len(options) == 1:
        return build(options[0] if hit is None else hit)
    chosen = []
    lock = threading.Lock()

    def run(*args):
        if not chosen:
            with lock:
                if not chosen:
                    chosen.append(_choose(memo, key, options, build, settle, args))
        chosen[0](*args)
    return run


def _choose(memo, key, options, build, settle, args):
    hit = memo.get(key)
    if hit is not None:
        return build(hit)
    runners = [build(option) for option in options]
    i = fastest(runners, args)
    if len(memo) > 256:  # many signatures: keep the memo small
        memo.clear()
    memo[key] = options[i]
    if settle is not None:
        settle()
    return runners[i]
