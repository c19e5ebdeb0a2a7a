"""pytest's hooks and fixtures for the whole suite: a private decoded-image cache for every test, and one line at
the end of a run counting the skipped tests by what they need.

The helpers the test files share (real data, Debian packages, gloo groups) live in ``helpers.py``:
``from helpers import fashion_mnist_dir``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import close_gloo_ranks, skip_summary
from ssl_siamese import data


def pytest_terminal_summary(terminalreporter) -> None:
    """After the run: :func:`skip_summary` of the skipped tests, so a run without ../shared says what it missed."""
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons.append(text.removeprefix("Skipped: "))
    if reasons:
        terminalreporter.write_line(skip_summary(reasons))


def pytest_sessionfinish(session, exitstatus) -> None:
    """The two-rank gloo group that tests share (``helpers.run_gloo_ranks``) ends with the session."""
    close_gloo_ranks()


@pytest.fixture(autouse=True)
def private_image_cache(monkeypatch, tmp_path_factory) -> Path:
    """Decoded image folders are cached under the test session's temporary folder, not in ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "ssl_siamese_cache"
    monkeypatch.setenv(data.CACHE_ENV, str(folder))
    return folder
