"""What every test shares: an environment holding only what the test sets.

``RateLimitService()`` reads the process's environment, as in Lambda; each
test starts from one without ``RATE_LIMIT_*`` or ``AWS_*`` variables.
"""

import os

import pytest


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("RATE_LIMIT_") or name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
