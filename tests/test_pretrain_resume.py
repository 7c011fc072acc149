"""A run killed with SIGKILL mid-epoch and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

from msacl.data.types import ImageSet
from msacl.pretrain import PretrainConfig, make_fabric, pretrain

STEPS_PER_EPOCH = 4


def _setup():
    cfg = PretrainConfig(method="msacl", epochs=2, batch_size=2, checkpoint_every=1, tsne=False)
    # Epoch 1 is a burn-in (an unreachable criterion, capped at 1 epoch), so the checkpoint the killed run
    # resumes from has no centres yet: the resumed run must freeze the same ones at the start of epoch 2.
    cfg.loss.burnin_max_epochs, cfg.loss.burnin_ratio = 1, 1e6
    cfg.log_every = 1  # a log line per step: the test kills the run in the middle of an epoch by watching it
    images = torch.rand(2 * STEPS_PER_EPOCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return cfg, ImageSet(images, torch.zeros(len(images), dtype=torch.long), [str(i) for i in range(len(images))])


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_pretrain_resume import _setup
    from msacl.pretrain import make_fabric, pretrain
    cfg, train = _setup()
    pretrain(cfg, train, sys.argv[1], fabric=make_fabric("cpu"), progress=False)
    """
)


def _log(run) -> list[dict]:
    p = run / "log.jsonl"
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    cfg, train = _setup()
    ref = pretrain(cfg, train, tmp_path / "ref", fabric=make_fabric("cpu"), progress=False)

    run = tmp_path / "killed"
    script = SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    # Kill in the middle of epoch 2: after its first step, long before its last.
    while not any(r["global_step"] >= STEPS_PER_EPOCH + 1 for r in _log(run)):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = torch.load(run / "checkpoint.pt", weights_only=True)
    assert killed["epoch"] == 1 and killed["phase"] == "burnin" and killed["centres"] is None
    assert max(r["global_step"] for r in _log(run)) < 2 * STEPS_PER_EPOCH

    enc = pretrain(cfg, train, run, fabric=make_fabric("cpu"), progress=False, resume=True)

    a, b = torch.load(ref, weights_only=True), torch.load(enc, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ca = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    cb = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])  # heads too
    assert torch.equal(ca["centres"], cb["centres"])
    # the log holds each step once, with the same losses as the uninterrupted run
    la, lb = _log(tmp_path / "ref"), _log(run)
    assert [r["global_step"] for r in lb] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["phase"] for r in lb] == ["burnin"] * STEPS_PER_EPOCH + ["main"] * STEPS_PER_EPOCH
    sa, sb = (json.loads((r / "centres.json").read_text()) for r in (tmp_path / "ref", run))
    assert sa == sb and len(sb["checks"]) == 2
