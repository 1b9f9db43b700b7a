"""The VQ-VAE (eq. 9, pretraining) and the multi-scale co-denoiser: shapes, time alignment of the outputs,
single-modality ablations, the frozen VQ-VAE, determinism."""

from __future__ import annotations

import pytest
import torch

from mobscale.model.mstdiff import MSTDiffDenoiser
from mobscale.model.vqvae import VQVAE1d, WaveletVQVAE, pretrain_vqvae

BANDS = (6, 6, 12, 24)  # db1 level 3 of T = 48
T = 48


def _model(**kw):
    torch.manual_seed(0)
    args = dict(band_lengths=BANDS, n_locations=9, width=16, heads=2, vqvae=WaveletVQVAE(BANDS, hidden=8, code_dim=8, codebook_size=16), loc_features=torch.randn(9, 4))
    args.update(kw)
    return MSTDiffDenoiser(**args)


def test_vqvae_eq9_terms_and_straight_through():
    torch.manual_seed(0)
    vq = VQVAE1d(hidden=8, code_dim=4, codebook_size=8, commitment=0.25)
    x = torch.randn(3, 12)
    x_hat, z_e, z_q, codes = vq(x)
    assert x_hat.shape == (3, 12) and z_e.shape == z_q.shape == (3, 12, 4) and codes.shape == (3, 12)
    # z_q is the nearest codebook entry of z_e
    d = ((z_e[..., None, :] - vq.codebook.weight) ** 2).sum(-1)
    assert torch.equal(codes, d.argmin(-1))
    loss, logs = vq.loss(x)
    rec = torch.nn.functional.mse_loss(x_hat, x)
    dist = torch.nn.functional.mse_loss(z_q, z_e)
    assert torch.allclose(loss, rec + dist + 0.25 * dist)
    loss.backward()
    assert vq.encoder[0].weight.grad is not None and vq.codebook.weight.grad is not None


def test_vqvae_pretraining_reduces_reconstruction_and_keeps_codes_alive():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, T, generator=g).cumsum(-1) / 4
    vq = WaveletVQVAE(BANDS, hidden=16, code_dim=8, codebook_size=16)
    before = vq.loss(w)[1]["rec"]
    pretrain_vqvae(vq, w, steps=150, batch_size=32, lr=3e-3, seed=0, progress=False)
    _, logs = vq.loss(w)
    assert logs["rec"] < 0.5 * before
    assert logs["codes_used"] >= 8
    assert not vq.training


def test_shapes_and_both_input_kinds():
    m = _model()
    B = 3
    eps, logits = m(torch.randn(B, T), torch.randint(0, 9, (B, T)), torch.tensor([0, 3, 5]))
    assert eps.shape == (B, T) and logits.shape == (B, T, 9)
    probs = torch.softmax(torch.randn(B, T, 9), -1)
    eps2, logits2 = m(torch.randn(B, T), probs, torch.tensor([0, 3, 5]), torch.tensor([0, 48, 300]))
    assert eps2.shape == (B, T) and logits2.shape == (B, T, 9)
    # one-hot probabilities are the same input as indices
    l = torch.randint(0, 9, (B, T))
    w = torch.randn(B, T)
    t = torch.tensor([1, 2, 3])
    a = m(w, l, t)[1]
    b = m(w, torch.nn.functional.one_hot(l, 9).float(), t)[1]
    assert torch.allclose(a, b, atol=1e-5)


def test_trajectory_logits_are_in_time_order():
    """With the scale outputs switched off, logits at step tau depend on the input at tau only: output
    position tau IS time step tau (the public code's band concatenation breaks this)."""
    m = _model(use_traffic=False, vqvae=None)
    with torch.no_grad():
        m.fuse_y.weight.zero_()
        m.fuse_y.bias.zero_()
    l = torch.randint(0, 9, (1, T))
    t = torch.tensor([2])
    base = m(None, l, t)[1]
    l2 = l.clone()
    l2[0, 30] = (l2[0, 30] + 1) % 9
    diff = (m(None, l2, t)[1] - base).abs().sum(-1)[0]
    assert diff[30] > 1e-4
    assert torch.all(diff[torch.arange(T) != 30] < 1e-6)


def test_trajectory_scale_outputs_reach_the_steps_of_their_window():
    """Changing the input inside one coarse window changes the outputs of every step (attention), but the
    coarse (cA3) contribution at step tau comes from the window tau // 8: check the upsampling map."""
    h = torch.arange(6.0).view(1, 6, 1)
    up = MSTDiffDenoiser._up(h, 48)
    assert up[0, :, 0].tolist() == [float(i // 8) for i in range(48)]


def test_copy_gate_adds_a_bonus_to_the_current_location_only():
    """The copy gate adds g(h) to the logit of the location each position holds now (indices or probability rows
    alike), nothing else; zero-initialised, so it starts as the model without it."""
    plain = _model(copy_gate=False, use_traffic=False, vqvae=None)
    gated = _model(use_traffic=False, vqvae=None, copy_gate=True)
    assert gated.copy_head is not None and plain.copy_head is None
    assert torch.count_nonzero(gated.copy_head.weight) == 0 and torch.count_nonzero(gated.copy_head.bias) == 0
    res = gated.load_state_dict(plain.state_dict(), strict=False)  # every other weight the same as plain's
    assert sorted(res.missing_keys) == ["copy_head.bias", "copy_head.weight"] and not res.unexpected_keys
    l = torch.randint(0, 9, (2, T))
    t = torch.tensor([0, 4])
    base = plain(None, l, t)[1]
    assert torch.equal(gated(None, l, t)[1], base)
    with torch.no_grad():
        gated.copy_head.bias.fill_(3.0)
    bonus = gated(None, l, t)[1] - base
    assert torch.allclose(bonus, 3.0 * torch.nn.functional.one_hot(l, 9).float(), atol=1e-5)
    probs = torch.nn.functional.one_hot(l, 9).float()
    assert torch.allclose(gated(None, probs, t)[1], gated(None, l, t)[1], atol=1e-5)
    # and the gate is trained: its weights get gradients from the logits
    gated(None, l, t)[1].logsumexp(-1).sum().backward()
    assert gated.copy_head.bias.grad is not None and gated.copy_head.bias.grad.abs() > 0


def test_step_layers_give_the_head_one_step_resolution():
    """Without step blocks nothing attends at single-step resolution: swapping the two tokens of a finest-scale
    window (T/2 tokens) only swaps their logits (the head sees the raw token plus the window's shared context).
    With a step block the logits of a position depend on which neighbour sits next to it."""
    torch.manual_seed(1)
    l = torch.randint(0, 9, (2, T))
    l[:, 10], l[:, 11] = 2, 5
    sw = l.clone()
    sw[:, 10], sw[:, 11] = 5, 2
    t = torch.tensor([0, 4])
    with torch.no_grad():
        for layers in (0, 1):
            m = _model(use_traffic=False, vqvae=None, step_layers=layers)
            assert len(m.step_blocks) == layers
            a, b = m(None, l, t)[1], m(None, sw, t)[1]
            swapped_back = b[:, [11, 10]]
            if layers == 0:
                assert torch.allclose(a[:, 10:12], swapped_back, atol=1e-5)
            else:
                assert (a[:, 10:12] - swapped_back).abs().max() > 1e-3
            assert a.shape == (2, T, 9)
    with pytest.raises(ValueError, match="step_layers"):
        _model(use_traffic=False, vqvae=None, output_order="band", step_layers=1)


def test_band_output_order_ablation_differs():
    m = _model(output_order="band", use_traffic=False, vqvae=None)
    eps, logits = m(None, torch.randint(0, 9, (2, T)), torch.tensor([0, 1]))
    assert eps is None and logits.shape == (2, T, 9)
    assert not hasattr(m, "fuse_y")


def test_single_modality_models_have_no_other_branch():
    tr = _model(use_trajectory=False)
    eps, logits = tr(torch.randn(2, T), None, torch.tensor([0, 1]))
    assert logits is None and eps.shape == (2, T)
    assert not any(n.startswith(("loc_emb", "out_y", "traj_in")) for n, _ in tr.named_parameters())
    tj = _model(use_traffic=False, vqvae=None)
    assert not any(n.startswith(("vqvae", "out_x", "raw_in")) for n, _ in tj.named_parameters())
    with pytest.raises(ValueError):
        tj(None, None, torch.tensor([0]))


def test_frozen_vqvae_stays_frozen_and_in_eval_mode():
    m = _model()
    assert all(not p.requires_grad for p in m.vqvae.parameters())
    m.train()
    assert m.training and not m.vqvae.training
    ids = {id(p) for p in m.trainable_parameters()}
    assert not any(id(p) in ids for p in m.vqvae.parameters())
    ft = _model(freeze_vqvae=False)
    ft.train()
    assert ft.vqvae.training and all(p.requires_grad for p in ft.vqvae.parameters())
    # fine-tuning reaches the VQ encoder through the straight-through path
    eps, _ = ft(torch.randn(2, T), torch.randint(0, 9, (2, T)), torch.tensor([0, 1]))
    ft.out_x[1].weight.data.normal_()
    eps, _ = ft(torch.randn(2, T), torch.randint(0, 9, (2, T)), torch.tensor([0, 1]))
    eps.pow(2).sum().backward()
    assert ft.vqvae.bands[0].encoder[0].weight.grad.abs().sum() > 0


def test_deterministic_given_seed():
    a, b = _model(), _model()
    args = (torch.randn(2, T, generator=torch.Generator().manual_seed(1)), torch.randint(0, 9, (2, T), generator=torch.Generator().manual_seed(2)), torch.tensor([1, 4]))
    ea, la = a(*args)
    eb, lb = b(*args)
    assert torch.equal(ea, eb) and torch.equal(la, lb)


def test_vqvae_pretraining_is_deterministic():
    w = torch.randn(16, T, generator=torch.Generator().manual_seed(3))
    states = []
    for _ in range(2):
        torch.manual_seed(123)  # the module init; pretraining draws only from its own seeded generator
        vq = WaveletVQVAE(BANDS, hidden=8, code_dim=4, codebook_size=8)
        pretrain_vqvae(vq, w, steps=30, batch_size=8, seed=5, progress=False)
        states.append(vq.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
