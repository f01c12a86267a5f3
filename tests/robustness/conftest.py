"""Fixtures for the robustness suite: one pre-imported CLI process that forks every run."""

from __future__ import annotations

import pytest

from .forkrun import Zygote


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()
