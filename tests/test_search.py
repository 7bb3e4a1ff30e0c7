"""The shared bi-level search loop (nbutils.engine.search) on toy supernets with known answers."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nbutils.engine.search import (BilevelOptimizer, arch_update_active, recalibrate_batchnorm, search, search_config,
                                   smooth_epsilon_at)


pytestmark = pytest.mark.usefixtures("one_thread")


class ToySupernet(nn.Module):
    """out = w1 * (p_good * tanh(w2 * x) + p_bad * (-x)); targets y = tanh(x) make the first op better."""

    def __init__(self, perturbable=True):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.tensor(0.8, dtype=torch.float64))
        self.alpha = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        if perturbable:
            self.arch_perturbation = None
        self.seen_perturbations = []
        self.epochs_started = []

    def weight_parameters(self):
        return [self.w1, self.w2]

    def arch_parameters(self):
        return [self.alpha]

    def forward(self, x):
        p = F.softmax(self.alpha, dim=0)
        if getattr(self, "arch_perturbation", None) is not None:
            self.seen_perturbations.append(self.arch_perturbation[0].detach().clone())
            p = p + self.arch_perturbation[0]
        return self.w1 * (p[0] * torch.tanh(self.w2 * x) + p[1] * (-x))

    def derive(self):
        return {"op": ["good", "bad"][int(self.alpha.argmax())]}

    def arch_snapshot(self):
        return {"alpha": F.softmax(self.alpha, 0).detach().numpy()}

    def on_epoch_start(self, epoch, total):
        self.epochs_started.append((epoch, total))


def toy_loss(net, batch):
    x, y = batch
    return F.mse_loss(net(x), y)


def toy_batch(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return x, torch.tanh(x)


@pytest.mark.parametrize("order", ["first", "second"])
def test_arch_step_moves_alpha_toward_the_better_op(order):
    net = ToySupernet()
    opt = BilevelOptimizer(net, toy_loss, w_lr=0.05, arch_lr=0.05, arch_weight_decay=0.0, order=order)
    before = F.softmax(net.alpha, 0)[0].item()
    for step in range(5):
        opt.arch_step(toy_batch(step), toy_batch(100 + step))
    assert F.softmax(net.alpha, 0)[0].item() > before + 0.01
    assert net.derive() == {"op": "good"}


def test_second_order_gradient_matches_exact_unrolled_gradient():
    # exact d/dα L_val(w - ξ ∇w L_train(w, α), α) by double backprop; the loop uses finite differences
    net = ToySupernet()
    xi = 0.1
    opt = BilevelOptimizer(net, toy_loss, w_lr=xi, w_weight_decay=0.0, order="second")
    train, val = toy_batch(1), toy_batch(2)
    _, fd_grads = opt.arch_gradients(train, val)

    w = [p.detach().clone().requires_grad_(True) for p in net.weight_parameters()]
    alpha = net.alpha.detach().clone().requires_grad_(True)

    def loss_with(w1, w2, a, batch):
        x, y = batch
        p = F.softmax(a, 0)
        return F.mse_loss(w1 * (p[0] * torch.tanh(w2 * x) + p[1] * (-x)), y)

    g = torch.autograd.grad(loss_with(w[0], w[1], alpha, train), w, create_graph=True)
    unrolled = [wi - xi * gi for wi, gi in zip(w, g)]
    exact = torch.autograd.grad(loss_with(unrolled[0], unrolled[1], alpha, val), alpha)[0]
    first_order = torch.autograd.grad(loss_with(w[0], w[1], alpha, val), alpha)[0]
    assert torch.allclose(fd_grads[0], exact, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(exact, first_order, rtol=1e-3)  # the second-order term matters here
    # weights are restored exactly after the virtual step and the finite differences
    assert torch.equal(net.w1.detach(), w[0].detach()) and torch.equal(net.w2.detach(), w[1].detach())


def test_weight_step_leaves_alpha_alone_and_lowers_training_loss():
    net = ToySupernet()
    opt = BilevelOptimizer(net, toy_loss, w_lr=0.1, w_weight_decay=0.0)
    alpha = net.alpha.detach().clone()
    batch = toy_batch(3)
    losses = [opt.weight_step(batch) for _ in range(20)]
    assert torch.equal(net.alpha.detach(), alpha)
    assert losses[-1] < losses[0]


def test_random_smoothing_perturbs_within_epsilon_then_restores():
    net = ToySupernet(perturbable=True)
    opt = BilevelOptimizer(net, toy_loss)
    opt.weight_step(toy_batch(0), smooth="random", epsilon=0.05)
    assert len(net.seen_perturbations) == 1
    delta = net.seen_perturbations[0]
    assert delta.abs().max() <= 0.05 and delta.abs().max() > 0
    assert net.arch_perturbation is None

    raw = ToySupernet(perturbable=False)  # no hook: raw α is shifted during the step and restored after
    opt = BilevelOptimizer(raw, toy_loss)
    alpha = raw.alpha.detach().clone()
    opt.weight_step(toy_batch(0), smooth="random", epsilon=0.5)
    assert torch.allclose(raw.alpha.detach(), alpha, atol=1e-12)


def test_adversarial_perturbation_increases_training_loss_inside_the_ball():
    net = ToySupernet()
    with torch.no_grad():
        net.alpha.copy_(torch.tensor([2.0, -2.0]))
    opt = BilevelOptimizer(net, toy_loss, adversarial_steps=5)
    batch = toy_batch(4)
    clean = toy_loss(net, batch).item()
    delta = opt._adversarial_perturbation(batch, epsilon=0.1)
    assert delta[0].abs().max() <= 0.1 + 1e-12
    net.arch_perturbation = delta
    attacked = toy_loss(net, batch).item()
    net.arch_perturbation = None
    assert attacked > clean
    # the attack lowers the good op's weight (direction that hurts)
    assert delta[0][0] < 0


def test_schedules_and_config_validation():
    assert [arch_update_active(e, [10, 30], 40) for e in (9, 10, 29, 30)] == [False, True, True, False]
    assert arch_update_active(39, [0, None], 40) and not arch_update_active(40, [0, None], 40)
    assert smooth_epsilon_at(0, 5, 0.3, 0.0) == 0.0 and smooth_epsilon_at(4, 5, 0.3, 0.0) == pytest.approx(0.3)
    assert smooth_epsilon_at(2, 5, 0.3, 0.1) == pytest.approx(0.2)
    assert search_config({"update_window": "10-30"})["update_window"] == [10, 30]
    with pytest.raises(ValueError, match="search.order"):
        search_config({"order": "third"})
    with pytest.raises(ValueError, match="search.learning_rate: unknown key"):
        search_config({"learning_rate": 1})
    with pytest.raises(ValueError, match="search.smooth"):
        search_config({"smooth": "gaussian"})


def test_search_loop_respects_update_window_and_writes_results(tmp_path):
    net = ToySupernet()
    batches = [toy_batch(i) for i in range(3)]
    cfg = {"search": {"epochs": 3, "update_window": [1, 2], "arch_lr": 0.05, "w_lr": 0.05, "arch_weight_decay": 0.0,
                      "eval": False}}
    result = search(cfg, tmp_path, net, progress=False, loaders={"weights": batches, "arch": batches},
                    loss_fn=toy_loss)
    alphas = [h["alpha"] for h in result.arch_history]
    assert [h["arch_updated"] for h in result.history] == [False, True, False]
    # α changes only in epoch 1 (snapshots are taken at the end of each epoch)
    assert np.allclose(alphas[0], [0.5, 0.5])
    assert alphas[1][0] > 0.5 and np.allclose(alphas[2], alphas[1])
    assert net.epochs_started == [(0, 3), (1, 3), (2, 3)]
    saved = json.loads((tmp_path / "search_arch.json").read_text())
    assert saved["arch"] == {"op": "good"} and saved["search_nme"] is None
    history = json.loads((tmp_path / "search_history.json").read_text())
    assert len(history["history"]) == 3 and len(history["arch_history"]) == 3
    assert (tmp_path / "search_supernet.pt").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_recalibrate_batchnorm_replaces_running_statistics_with_the_batches_averages():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2, momentum=0.1), nn.Dropout(0.5))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))   # identity conv: BN sees the images themselves
    net[1].running_mean.fill_(100.0)
    net[1].running_var.fill_(1e-6)
    batches = [{"image": torch.randn(4, 2, 3, 3) * scale + shift} for scale, shift in ((1.0, 2.0), (3.0, -1.0), (2.0, 0.5))]
    used = recalibrate_batchnorm(net, batches + batches, torch.device("cpu"), batches=3)
    assert used == 3
    # cumulative average over the three batches of each batch's mean / unbiased variance per channel
    stacked = [b["image"] for b in batches]
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in stacked]).mean(0)
    expected_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in stacked]).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected_mean)
    torch.testing.assert_close(net[1].running_var, expected_var)
    assert net[1].momentum == 0.1 and not net.training and not net[2].training


def test_search_nme_uses_recalibrated_statistics_of_a_sampling_supernet(smoke_root):
    """A DenseNAS supernet that samples 2 ops per step, std-0.001 init, one search step: without
    recalibration its eval output collapses (~1e-13) and every face decodes to the same point."""
    from nbutils.engine.search import build_search_loaders, evaluate_supernet
    from nbutils.models import densenas

    torch.manual_seed(0)
    cfg = {"data": {"root": str(smoke_root)}, "train": {"input_size": 32, "heatmap_size": 8},
           "model": {"space": "modified_densenas", "stages": [1, 2], "channel_scale": 0.125, "max_stack": 1,
                     "sample_ops": 2}, "search": {}}
    supernet = densenas.build_supernet(cfg)
    loaders = build_search_loaders(cfg, 8, 0.5, 0)
    images = next(iter(loaders["eval"]["common"]))["image"]
    supernet.eval()
    with torch.no_grad():
        assert supernet(images).abs().max() < 1e-9          # the collapse the recalibration removes
    evaluate_supernet(supernet, loaders["eval"], torch.device("cpu"), calibration_loader=loaders["weights"])
    with torch.no_grad():
        heatmaps = supernet(images)
    assert heatmaps.abs().max() > 1e-6   # the scale of the std-0.001 final conv, not of rounding noise
    assert heatmaps.flatten(2).argmax(-1).unique().numel() > 1   # not one decoded position for all
