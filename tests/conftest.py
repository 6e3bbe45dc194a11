"""Settings for the whole test suite.

Hypothesis: the suite runs on two cores beside real servers and subprocesses, so time
is not a fair judge of a strategy. No per-example deadline and no "too slow" health
check; example counts stay as each test sets them.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "vmcrypt", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("vmcrypt")
