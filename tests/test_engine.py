"""Training engine: resume equivalence, NaN guard, atomic checkpoints, determinism, DDP, evaluation cadence.

All runs use the smoke synth300w at 64 -> 16 pixels and (mostly) a tiny convolutional network so that
the whole file runs in well under a minute and a half on two cores.
"""
import io
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from nbutils import metrics
from nbutils.engine import checkpoint as checkpoint_module
from nbutils.engine import evaluate, fit, load_checkpoint, mean_shape, mean_shape_baseline, save_checkpoint
from nbutils.engine import train as train_module
from nbutils.engine.runtime import Precision

TRAIN_IMAGES = 16
BATCH = 8


class TinyLandmarkNet(nn.Module):
    """[N, 3, S, S] -> [N, 68, S/4, S/4]: two stride-2 convolutions and a 1x1 heatmap layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 68, 1))

    def forward(self, x):
        return self.body(x)


def tiny_model(seed: int = 0) -> TinyLandmarkNet:
    torch.manual_seed(seed)
    return TinyLandmarkNet()


def smoke_cfg(root, **train) -> dict:
    schedule = {"input_size": 64, "heatmap_size": 16, "epochs": 2, "batch_size": BATCH, "lr": 1e-3,
                "lr_steps": [1], "seed": 7}
    schedule.update(train)
    return {"data": {"root": str(root), "max_train": TRAIN_IMAGES}, "train": schedule}


def without_timing(history):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def assert_same_weights(first: nn.Module, second: nn.Module):
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------- resume

def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, smoke_root, monkeypatch):
    cfg = smoke_cfg(smoke_root)
    straight = fit(cfg, tmp_path / "straight", model=tiny_model(), progress=False)

    real_epoch = train_module._train_one_epoch

    def killed_in_second_epoch(*args, **kwargs):
        if args[6] == 1:  # epoch index
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_one_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "resumed", model=tiny_model(), progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(train_module, "_train_one_epoch", real_epoch)

    # A differently initialised network proves the weights come from last.pt.
    resumed = fit(cfg, tmp_path / "resumed", model=tiny_model(seed=123), progress=False)
    assert_same_weights(straight.model, resumed.model)
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert [entry["lr"] for entry in resumed.history] == [1e-3, pytest.approx(1e-4)]   # scheduler restored
    assert resumed.best == straight.best and resumed.metrics["best_epoch"] == straight.metrics["best_epoch"]


def test_finished_run_is_not_retrained(tmp_path, smoke_root, monkeypatch):
    cfg = smoke_cfg(smoke_root, epochs=1)
    first = fit(cfg, tmp_path, model=tiny_model(), progress=False)
    monkeypatch.setattr(train_module, "_train_one_epoch", lambda *a, **k: pytest.fail("trained again"))
    again = fit(cfg, tmp_path, model=tiny_model(seed=5), progress=False)
    assert_same_weights(first.model, again.model)
    assert again.best == first.best


# ----------------------------------------------------------------------------- NaN guard

class NanAfterCalls(TinyLandmarkNet):
    """Outputs NaN from its `bad_call`-th training forward pass on (1-based)."""

    def __init__(self, bad_call: int):
        torch.manual_seed(0)
        super().__init__()
        self.bad_call, self.calls = bad_call, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                out = out * float("nan")
        return out


def test_non_finite_loss_stops_naming_epoch_and_step(tmp_path, smoke_root):
    steps = TRAIN_IMAGES // BATCH
    with pytest.raises(FloatingPointError, match=rf"epoch 2/2, step 1/{steps}\b"):
        fit(smoke_cfg(smoke_root), tmp_path, model=NanAfterCalls(bad_call=steps + 1), progress=False)
    # The completed first epoch is still the resume point.
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_non_finite_loss_from_huge_learning_rate(tmp_path, smoke_root):
    cfg = smoke_cfg(smoke_root, optimizer="sgd", lr=1e30, momentum=0.0, epochs=3)
    with pytest.raises(FloatingPointError, match=r"epoch \d/3, step \d/2 \(lr 1e\+30\)"):
        fit(cfg, tmp_path, model=tiny_model(), progress=False)


# ----------------------------------------------------------------------------- atomic checkpoints

def half_writing_save(real_save):
    def save(obj, file):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("disk full (simulated)")
    return save


def test_failed_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_checkpoint({"epoch": 1, "weights": torch.arange(1000.0)}, path)
    monkeypatch.setattr(checkpoint_module.torch, "save", half_writing_save(torch.save))
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.arange(1000.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]   # no temporary left behind


def test_interrupted_checkpoint_write_during_fit_leaves_last_pt_loadable(tmp_path, smoke_root, monkeypatch):
    cfg = smoke_cfg(smoke_root, epochs=1)
    fit(cfg, tmp_path, model=tiny_model(), progress=False)
    cfg["train"]["epochs"] = 2
    monkeypatch.setattr(checkpoint_module.torch, "save", half_writing_save(torch.save))
    with pytest.raises(OSError, match="simulated"):
        fit(cfg, tmp_path, model=tiny_model(), progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*broken.pt"):
        load_checkpoint(tmp_path / "broken.pt")


# ----------------------------------------------------------------------------- determinism (real HRNet)

def test_same_seed_gives_same_result_with_hrnet(tmp_path, smoke_root):
    cfg = smoke_cfg(smoke_root, epochs=1, seed=11, max_steps_per_epoch=1)
    cfg["data"]["max_eval"] = 4
    cfg["model"] = {"name": "hrnet", "width": 18}
    first = fit(cfg, tmp_path / "a", progress=False)
    second = fit(cfg, tmp_path / "b", progress=False)
    assert_same_weights(first.model, second.model)
    assert first.metrics["nme_full"] == second.metrics["nme_full"]
    assert math.isfinite(first.metrics["nme_full"])
    # Cost of HRNetV2-W18 is reported at the training input size (4.66 GMACs at 256 -> ~1/16 at 64).
    assert 9.0 < first.metrics["params_m"] < 10.5
    assert 0.2 < first.metrics["gflops"] < 0.4


def test_different_seed_changes_training(tmp_path, smoke_root):
    a = fit(smoke_cfg(smoke_root, epochs=1, seed=1), tmp_path / "a", model=tiny_model(), progress=False)
    b = fit(smoke_cfg(smoke_root, epochs=1, seed=2), tmp_path / "b", model=tiny_model(), progress=False)
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]


# ----------------------------------------------------------------------------- evaluation cadence and outputs

def test_eval_every_and_history_and_best_checkpoint(tmp_path, smoke_root):
    result = fit(smoke_cfg(smoke_root, epochs=3, eval_every=2, lr_steps=[2]), tmp_path, model=tiny_model(),
                 progress=False)
    history = result.history
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert "nme_full" not in history[0]                          # epoch 1: not a multiple of 2
    for entry in history[1:]:                                     # epoch 2 (cadence) and 3 (last epoch)
        assert {"nme_common", "nme_challenge", "nme_full", "nme_test"} <= entry.keys()
    assert [entry["lr"] for entry in history] == [1e-3, 1e-3, pytest.approx(1e-4)]
    import json
    assert without_timing(json.loads((tmp_path / "history.json").read_text())) == without_timing(history)
    evaluated = [entry for entry in history if "nme_full" in entry]
    best_entry = min(evaluated, key=lambda entry: entry["nme_full"])
    assert result.metrics["best_epoch"] == best_entry["epoch"]
    assert result.metrics["nme_full"] == best_entry["nme_full"] == result.best["full"]["nme"]
    assert result.metrics["final"]["full"]["nme"] == history[-1]["nme_full"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best_entry["epoch"]
    # full is the union of common and challenge: its NME is their image-weighted mean.
    best = result.best
    weighted = (best["common"]["nme"] * best["common"]["n"] + best["challenge"]["nme"] * best["challenge"]["n"])
    assert best["full"]["nme"] == pytest.approx(weighted / (best["common"]["n"] + best["challenge"]["n"]))


def test_evaluate_returns_predictions_matching_nmes(smoke_root):
    cfg = smoke_cfg(smoke_root)
    out = evaluate(tiny_model(), cfg)
    assert list(out["summary"]) == ["common", "challenge", "full", "test"]
    from nbutils.data import Face300W
    for subset in ("common", "challenge", "test"):
        records = Face300W(smoke_root, subset).records
        pred, gt = out["predictions"][subset], out["ground_truth"][subset]
        assert pred.shape == gt.shape == (len(records), 68, 2)
        np.testing.assert_allclose(gt, np.stack([r.points for r in records]), atol=1e-4)
        np.testing.assert_allclose(out["nmes"][subset], metrics.nme_per_image(pred, gt))


class ConstantHeatmaps(nn.Module):
    """Ignores the image and returns fixed heatmaps (a parameter so the engine finds a device)."""

    def __init__(self, heatmaps):
        super().__init__()
        self.heatmaps = nn.Parameter(heatmaps[None], requires_grad=False)

    def forward(self, x):
        return self.heatmaps.expand(x.shape[0], -1, -1, -1)


def test_flip_test_averages_with_mirrored_prediction(smoke_root):
    cfg = smoke_cfg(smoke_root)
    torch.manual_seed(0)
    raw = torch.rand(68, 16, 16)
    # Mirror-symmetric maps: flip test must not change anything.
    symmetric = 0.5 * (raw + metrics.flip_heatmaps(raw[None])[0])
    plain = evaluate(ConstantHeatmaps(symmetric), cfg, subsets=("common",), flip_test=False)
    flipped = evaluate(ConstantHeatmaps(symmetric), cfg, subsets=("common",), flip_test=True)
    np.testing.assert_allclose(plain["predictions"]["common"], flipped["predictions"]["common"])
    # Arbitrary maps: the prediction is the decode of the average with the mirrored maps.
    averaged = evaluate(ConstantHeatmaps(symmetric), cfg, subsets=("common",))
    with_flip = evaluate(ConstantHeatmaps(raw), cfg, subsets=("common",), flip_test=True)
    np.testing.assert_allclose(with_flip["predictions"]["common"], averaged["predictions"]["common"], atol=1e-9)


def test_mean_shape_baseline_places_mean_training_shape(smoke_root):
    cfg = smoke_cfg(smoke_root)
    shape = mean_shape(cfg)
    assert shape.shape == (68, 2)
    assert np.all((shape > 0) & (shape < 16))                  # inside the 16-pixel heatmap
    assert shape[36, 0] < shape[45, 0]                          # outer eye corners left to right
    baseline = mean_shape_baseline(cfg)
    assert list(baseline) == ["common", "challenge", "full", "test"]
    # A constant model whose heatmaps peak at the mean shape scores about the same (within decode rounding).
    centres = np.arange(16) + 0.5
    maps = np.exp(-((centres[None, None, :] - shape[:, 0, None, None]) ** 2
                    + (centres[None, :, None] - shape[:, 1, None, None]) ** 2) / 2.0)
    model_summary = evaluate(ConstantHeatmaps(torch.from_numpy(maps).float()), cfg)["summary"]
    for subset in baseline:
        assert model_summary[subset]["nme"] == pytest.approx(baseline[subset]["nme"], rel=0.15)


def test_bad_train_settings_name_the_key(tmp_path, smoke_root):
    with pytest.raises(ValueError, match="train.optimizer"):
        fit(smoke_cfg(smoke_root, optimizer="adagrad"), tmp_path, model=tiny_model(), progress=False)
    with pytest.raises(ValueError, match="train.epochs"):
        fit(smoke_cfg(smoke_root, epochs=0), tmp_path, model=tiny_model(), progress=False)


# ----------------------------------------------------------------------------- DDP

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, root: str, run_dir: str, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # Different initial weights per rank: DDP must broadcast rank 0's.
    result = fit(smoke_cfg(root, epochs=2), run_dir, model=tiny_model(seed=rank), progress=False)
    torch.save({"weights": result.model.state_dict(), "history": result.history, "best": result.best},
               os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_cpu_processes_gloo(tmp_path, smoke_root):
    run_dir = tmp_path / "run"
    for attempt in range(3):
        # A port found free can be taken by another process before rank 0 listens on it: try another.
        try:
            mp.spawn(ddp_worker, args=(2, free_port(), str(smoke_root), str(run_dir), str(tmp_path)), nprocs=2)
            break
        except mp.ProcessRaisedException as error:
            if "EADDRINUSE" not in str(error) or attempt == 2:
                raise
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for key in rank0["weights"]:
        assert torch.equal(rank0["weights"][key], rank1["weights"][key]), key
    assert without_timing(rank0["history"]) == without_timing(rank1["history"])
    assert rank0["best"] == rank1["best"]
    # Each rank sees half of the training images per epoch.
    assert [entry["steps"] for entry in rank0["history"]] == [math.ceil(TRAIN_IMAGES / 2 / BATCH)] * 2
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2
    assert len(load_checkpoint(run_dir / "last.pt")["rng"]) == 2
    assert "nme_full" in rank0["history"][-1]


# ----------------------------------------------------------------------------- precision paths

def test_cpu_fast_mode_trains_with_bf16_and_channels_last(tmp_path, smoke_root):
    result = fit(smoke_cfg(smoke_root, epochs=1, fast=True), tmp_path, model=tiny_model(), progress=False)
    assert math.isfinite(result.history[0]["train_loss"]) and math.isfinite(result.metrics["nme_full"])
    assert result.model.body[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_grad_scaler_path_matches_plain_training(tmp_path, smoke_root, monkeypatch):
    # The fp16 CUDA policy's GradScaler, exercised on CPU in float32: scaling must not change the result
    # beyond rounding (the scale is a power of two, so unscaled gradients are exact).
    plain = fit(smoke_cfg(smoke_root, epochs=1), tmp_path / "plain", model=tiny_model(), progress=False)
    monkeypatch.setattr(train_module, "precision_policy",
                        lambda device, fast=False: Precision(None, use_grad_scaler=True, channels_last=False))
    scaled = fit(smoke_cfg(smoke_root, epochs=1), tmp_path / "scaled", model=tiny_model(), progress=False)
    assert load_checkpoint(tmp_path / "scaled" / "last.pt")["scaler"]["scale"] > 1.0
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(scaled.model.state_dict()[key], value, rtol=1e-4, atol=1e-6)
