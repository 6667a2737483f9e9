"""Shared pytest set-up: the hypothesis profiles.

* ``ci`` (the default) -- derandomized and without an example database, so every run, on every machine,
  tries the same examples and a plain ``python -m pytest`` is quick and reproducible.
* ``dev`` -- many more random examples, remembered in ``.hypothesis/`` so a failure is replayed first;
  for hunting bugs locally: ``HYPOTHESIS_PROFILE=dev python -m pytest tests/test_properties.py``.
* ``mutate`` -- ``ci`` without shrinking: the same examples, so the same verdict, but a failure is reported as
  soon as it is found. ``python -m tests.mutate`` uses it to run the property tests once per planted bug.

No deadline in either: a test builds a fresh model per example, and the time that takes depends on the
machine and its load, not on the code under test. For the same reason the ``too_slow`` health check
(which times data generation, model building included) is suppressed.
"""

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=50,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutate",
    settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
    print_blob=False,
)
settings.register_profile(
    "dev",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
