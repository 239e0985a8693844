"""The shared training loop (edgeopt/train.py) and torchrun support (edgeopt/distributed.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.errors import StageError
from edgeopt.stages.distill import DistillConfig, distill
from edgeopt.stages.prune import PruneConfig, prune
from edgeopt.train import TrainingDiverged, TrainSettings, fit
from stage_helpers import assert_clean_failure, assert_no_output, cli, read_manifest, tmp_leftovers


def _toy(n: int = 40, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = torch.nn.Linear(4, 3)
    calls = []

    def batch_loss(net, idx):
        calls.append(len(idx))
        return torch.nn.functional.cross_entropy(net(x[idx]), y[idx])

    return model, batch_loss, calls


# --- divergence -----------------------------------------------------------------------------------

def test_nan_loss_stops_training():
    import torch

    model, good_loss, _ = _toy()
    n = [0]

    def batch_loss(net, idx):
        n[0] += 1
        loss = good_loss(net, idx)
        return loss * float("nan") if n[0] == 3 else loss

    with pytest.raises(TrainingDiverged) as e:
        fit(model, 40, batch_loss, TrainSettings(epochs=2, batch_size=8, lr=1e-2))
    msg = str(e.value)
    assert "non-finite at epoch 1, step 3" in msg and "none (diverged in the first epoch)" in msg and "lr=0.01" in msg
    assert isinstance(e.value, StageError)
    assert torch.isfinite(model.weight).all()  # the bad step was never applied


def test_nan_loss_names_the_last_good_epoch():
    model, good_loss, _ = _toy()
    n = [0]

    def batch_loss(net, idx):
        n[0] += 1
        loss = good_loss(net, idx)
        return loss + float("inf") if n[0] == 7 else loss  # 5 steps an epoch: step 2 of epoch 2

    with pytest.raises(TrainingDiverged, match="epoch 2, step 2; last good checkpoint: epoch 1"):
        fit(model, 40, batch_loss, TrainSettings(epochs=3, batch_size=8), evaluate=lambda m: 0.5)


def test_huge_lr_distill_diverges_and_leaves_nothing(tmp_path, bert4, kw_jsonl):
    out = tmp_path / "student"
    with pytest.raises(TrainingDiverged, match="non-finite"):
        distill(bert4, out, DistillConfig(data=str(kw_jsonl), student_layers=2, epochs=2, batch_size=8, lr=1e30))
    assert_no_output(out)
    assert not tmp_leftovers(tmp_path)


def test_huge_lr_prune_recovery_diverges(tmp_path, bert4, kw_jsonl):
    out = tmp_path / "pruned"
    with pytest.raises(StageError, match="non-finite"):
        prune(bert4, out, PruneConfig(sparsity=0.5, structured="neurons", data=str(kw_jsonl), recover_steps=6,
                                      batch_size=8, lr=1e30))
    assert_no_output(out)


def test_cli_diverged_distill_is_a_clean_failure(tmp_path, bert4, kw_jsonl):
    out = tmp_path / "student"
    line = assert_clean_failure(cli("distill", bert4, "-o", out, "--data", kw_jsonl, "--student-layers", "2",
                                    "--epochs", "1", "--batch-size", "8", "--lr", "1e30"), out, codes=(1,))
    assert "non-finite" in line and "lower the learning rate" in line


# --- mechanics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_train", [40, 36])
def test_grad_accum_equals_a_bigger_batch(n_train):
    """batch 4 x 2 accumulated micro-batches takes the same optimizer steps as batch 8."""
    import torch

    m1, loss1, calls1 = _toy(n_train)
    m2, loss2, calls2 = _toy(n_train)
    m2.load_state_dict(m1.state_dict())
    steps1, steps2 = [], []
    fit(m1, n_train, loss1, TrainSettings(epochs=2, batch_size=8, lr=5e-2, warmup_ratio=0.2), after_step=lambda: steps1.append(1))
    fit(m2, n_train, loss2, TrainSettings(epochs=2, batch_size=4, grad_accum=2, lr=5e-2, warmup_ratio=0.2),
        after_step=lambda: steps2.append(1))
    assert len(steps1) == len(steps2) == 2 * 5
    assert max(calls2) == 4 and len(calls2) == 2 * len(range(0, n_train, 4))
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(m1.weight, _toy(n_train)[0].weight)  # it did train


@pytest.mark.parametrize("max_steps,epochs_seen", [(3, 1), (7, 2)])
def test_max_steps_stops_early(max_steps, epochs_seen):
    model, batch_loss, calls = _toy(40)
    steps = []
    res = fit(model, 40, batch_loss, TrainSettings(epochs=100, batch_size=8, max_steps=max_steps),
              after_step=lambda: steps.append(1))
    assert len(steps) == max_steps == len(calls)
    assert [h["epoch"] for h in res.history] == list(range(1, epochs_seen + 1))
    assert res.world_size == 1


def test_best_epoch_weights_are_kept():
    """Validation accuracy 0.2, 0.9, 0.4: the weights after epoch 2 are restored."""
    import torch

    model, batch_loss, _ = _toy(40)
    accs = iter([0.2, 0.9, 0.4])
    snapshots = []

    def evaluate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(accs)

    res = fit(model, 40, batch_loss, TrainSettings(epochs=3, batch_size=8, lr=1e-1), evaluate=evaluate)
    assert res.best_epoch == 2 and res.best_val_accuracy == 0.9
    assert [h["val_accuracy"] for h in res.history] == [0.2, 0.9, 0.4]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots[1][k])
    assert not torch.equal(snapshots[1]["weight"], snapshots[2]["weight"])


def test_frozen_parameters_stay_frozen():
    import torch

    model, batch_loss, _ = _toy(40)
    model.bias.requires_grad_(False)
    bias = model.bias.detach().clone()
    fit(model, 40, batch_loss, TrainSettings(epochs=1, batch_size=8, lr=1e-1))
    assert torch.equal(model.bias, bias)


# --- torchrun -------------------------------------------------------------------------------------

def test_torchrun_two_processes(tmp_path, bert4, kw_jsonl):
    out = tmp_path / "runs" / "student"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "EDGEOPT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("EDGEOPT_DEBUG", None)
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "edgeopt.cli.main", "distill", str(bert4), "-o", str(out),
           "--data", str(kw_jsonl), "--student-layers", "2", "--epochs", "1", "--batch-size", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.is_dir() and sorted(p.name for p in out.parent.iterdir()) == ["student"]  # no temp folders left
    m = read_manifest(out)
    assert m["metrics"]["world_size"] == 2
    assert m["metrics"]["layer_map"] == [1, 3]
    # 60 rows over 2 ranks, batch 8 per rank: 4 steps, one history entry
    assert len(m["metrics"]["history"]) == 1 and np.isfinite(m["metrics"]["history"][0]["train_loss"])
    assert proc.stdout.count("distilled") == 1, proc.stdout  # only rank 0 reports
    assert "Traceback" not in proc.stderr
