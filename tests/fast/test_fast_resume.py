"""``--fast`` runs resume bitwise (issue 15, item 5).

The compiled step and the readable one agree only to rounding, so a run must resume on the
path it trained on (a ``--fast`` run resumed without ``--fast`` silently went on along the
other). The checkpoint records the path and a plain ``--resume`` goes on along it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from handgrad import fast
from handgrad.train import checkpoint as ck

from support import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.compiled]  # builds the C++ extension on first use

TRAIN = ("train", "--fast", "--hidden", "32", "--epochs", "2", "--quiet", "--threads", "1")


def test_a_fast_run_resumes_bitwise_on_the_fast_path_by_itself(tmp_path: Path) -> None:
    if not fast.fast_path_status()[0]:
        pytest.skip("the fast path cannot be built here")
    assert run_cli(*TRAIN, "--out", str(tmp_path / "straight")).status == 0
    assert run_cli(*TRAIN, "--stop-after", "1", "--out", str(tmp_path / "cut")).status == 0
    last = str(tmp_path / "cut" / "last.safetensors")
    assert ck.load_checkpoint(last).info["fast"] is True

    shutil.copytree(tmp_path / "cut", tmp_path / "cut2")
    plain = run_cli("train", "--resume", last, "--quiet", "--threads", "1")
    assert plain.status == 0, plain.err
    last2 = str(tmp_path / "cut2" / "last.safetensors")
    assert run_cli("train", "--resume", last2, "--fast", "--quiet", "--threads", "1").status == 0
    straight = ck.load_checkpoint(tmp_path / "straight" / "last").tensors
    for cut in ("cut", "cut2"):
        resumed = ck.load_checkpoint(tmp_path / cut / "last").tensors
        assert straight.keys() == resumed.keys()
        differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
        assert differ == [], cut
