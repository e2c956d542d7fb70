"""Hypothesis settings for the property tests.

Profile ``ci`` (no deadline, 25 derandomized examples) is loaded when the ``CI``
environment variable is set; ``dev`` (30 random examples) otherwise; ``thorough``
(300 examples) on request. Select one explicitly with ``pytest --hypothesis-profile=NAME``.
"""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")

hypothesis.settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
    derandomize=True,
)
hypothesis.settings.register_profile(
    "dev",
    deadline=None,
    max_examples=30,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=300,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")
