"""Thread count: the cores other processes are busy with are left to them."""

import os

import pytest
import torch

from mep_hf import runtime


@pytest.mark.parametrize("load, expected", [(0.1, 4), (1.4, 3), (3.6, 1), (9.0, 1)])
def test_default_threads_leave_the_busy_cores(monkeypatch, load, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert runtime.default_num_threads() == expected


def test_configure_threads_honours_an_explicit_count_and_omp(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert runtime.configure_threads() == 2 and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="num_threads"):
            runtime.configure_threads(0)
    finally:
        torch.set_num_threads(before)
