"""Hypothesis profiles, chosen by HYPOTHESIS_PROFILE: dev (quick), ci (default), thorough."""
import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("dev", max_examples=20, **_common)
settings.register_profile("ci", max_examples=100, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pathlib  # noqa: E402

import pytest  # noqa: E402

DATA = pathlib.Path(os.environ.get("MINDREF_DATA",
                                  pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data():
    """The real data folder (../shared/data or MINDREF_DATA). Missing: skip, except in CI,
    where the data is always laid beside the checkout and its absence is a failure."""
    if not (DATA / "ml-100k" / "u.data").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared data is missing at {DATA}")
        pytest.skip(f"no shared data at {DATA} (set MINDREF_DATA)")
    return DATA


def require(module: str):
    """Import an optional dependency (the export extra); skip without it, except in CI."""
    if os.environ.get("CI") == "true":
        return __import__(module)
    return pytest.importorskip(module)


def _sigint_default() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# for a subprocess a test sends SIGINT to: a test run started in the background (`cmd &` in a
# non-interactive shell, as CI may) inherits SIGINT ignored, and Python then never turns it into
# KeyboardInterrupt; the child gets the default disposition back, as from a terminal
INTERRUPTIBLE = {"preexec_fn": _sigint_default}


# a small synthetic training run's flags, shared by the command-line tests
SMALL = ["--data-format", "synthetic", "--users", "150", "--dim", "8", "--K", "3", "--hidden", "16",
         "--max-len", "20", "--batch-size", "64", "--negatives", "16"]
