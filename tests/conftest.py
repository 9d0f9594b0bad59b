"""What every test folder shares: the slow tier.

Tests marked `slow` (robustness sweep, browser tests: README, "Tests") run only with BAGEL_SLOW_TESTS=1, which
.ci/run sets. Without it they skip with that reason; under CI=true they fail instead, so a CI run cannot leave
them out unnoticed. Checked before any fixture of the test (a browser, a server) is set up.
"""
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SLOW_TESTS_ON = os.environ.get("BAGEL_SLOW_TESTS", "").lower() in ("1", "true", "yes")
SLOW_REASON = "slow tier (robustness sweep, browser tests): runs with BAGEL_SLOW_TESTS=1 (.ci/run sets it; README, 'Tests')"


def pytest_runtest_setup(item):
    if item.get_closest_marker("slow") is None or SLOW_TESTS_ON:
        return
    if IN_CI:
        pytest.fail(f"{SLOW_REASON} (CI=true: required, not skipped)")
    pytest.skip(SLOW_REASON)
