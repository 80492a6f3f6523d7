"""GPEMSR networks (three stages), flows, alignment and losses, at tiny sizes."""

import pytest
import torch
import torch.nn.functional as F

from emsrflow.archs import gpemsr as G
from emsrflow.archs.backbones import Backbone
from emsrflow.archs.registry import build_network
from emsrflow.archs.spynet import SPyNet, load_spynet_weights

# Tiny Stage I/II architecture: five scales (compression p = 16) of 8 channels.
PRIOR = {
    "channels": [8, 8, 8, 8, 8],
    "latent_dim": 8,
    "codes": 16,
    "bottleneck_blocks": 1,
    "norm_groups": 4,
}
TINY = {
    "gpemsr_codebook": PRIOR,
    "gpemsr_prior": {**PRIOR, "indexer_blocks": 1},
    "gpemsr": {
        "channels": 8,
        "deform_groups": 2,
        "front_blocks": 1,
        "back_blocks": 1,
        "prior": {**PRIOR, "indexer_blocks": 1},
    },
}


def tiny(arch, scale, **kwargs):
    torch.manual_seed(0)
    return build_network({"type": arch, "scale": scale, **TINY[arch], **kwargs})


def trainable(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def texture(size, seed=0, border=24):
    """Smooth random texture (correlation length of a few pixels), in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(1, 1, size + 2 * border, size + 2 * border, generator=g)
    for _ in range(3):
        big = F.avg_pool2d(big, 3, 1, 1, count_include_pad=False)
    return (big - big.min()) / (big.max() - big.min())


def adam_lowers(loss_fn, params, steps=4, lr=2e-3):
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(loss_fn().item())
    return losses


# ---------------------------------------------------------------------------------------
# Stage I


def test_quantizer_picks_the_nearest_code_with_a_straight_through_gradient():
    vq = G.VectorQuantizer(codes=4, dim=3, beta=1.0)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.eye(4, 3) * 2)  # codes (2,0,0), (0,2,0), (0,0,2), 0
    z = torch.tensor([[1.8, 0.1, 0.0], [0.1, 0.1, 0.2], [0.0, 0.3, 2.5]]).T.reshape(1, 3, 1, 3)
    z.requires_grad_()
    quantized, loss, indices = vq(z)
    assert indices.tolist() == [[[0, 3, 2]]]
    torch.testing.assert_close(quantized.detach(), vq.lookup(indices))
    codes = vq.lookup(indices).detach()
    torch.testing.assert_close(loss, 2 * F.mse_loss(z.detach(), codes))  # β = 1
    weights = torch.randn(z.shape)
    (quantized * weights).sum().backward()  # straight-through: identity backward
    torch.testing.assert_close(z.grad, weights)
    assert vq.embedding.weight.grad is None


def test_codebook_gradients_reach_the_encoder_and_the_codes():
    net = tiny("gpemsr_codebook", 1)
    assert net.scale == 1 and net.window == 16 and net.compression == 16
    hr = torch.rand(2, 1, 32, 48)
    recon, vq_loss, indices = net.autoencode(hr)
    assert recon.shape == hr.shape and indices.shape == (2, 2, 3)
    assert indices.dtype == torch.int64 and 0 <= indices.min() and indices.max() < 16
    F.l1_loss(recon, hr).backward(retain_graph=True)
    assert net.encoder.stem[0].weight.grad.abs().sum() > 0  # through the quantizer
    assert net.quantizer.embedding.weight.grad is None  # codes learn from L_c only
    vq_loss.backward()
    assert net.quantizer.embedding.weight.grad.abs().sum() > 0


def test_codebook_sizes_and_padding():
    net = tiny("gpemsr_codebook", 1)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.rand(1, 1, 24, 32))
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 21, 35)).shape == (1, 1, 21, 35)
    with pytest.raises(ValueError, match="scale must be 1"):
        build_network({"type": "gpemsr_codebook", "scale": 2})
    assert G.PatchDiscriminator(channels=8, layers=2, padding=1)(torch.rand(2, 1, 32, 32)).ndim == 4


def test_adversarial_losses_and_r1():
    disc = G.PatchDiscriminator(channels=4, layers=2, padding=1)
    real = torch.rand(2, 1, 32, 32, requires_grad=True)
    real_logits, fake_logits = disc(real), disc(torch.rand(2, 1, 32, 32))
    torch.testing.assert_close(
        G.discriminator_adversarial_loss(real_logits, fake_logits),
        0.5 * (fake_logits.mean() - real_logits.mean()),
    )
    assert G.generator_adversarial_loss(fake_logits) == -fake_logits.mean()
    penalty = G.r1_penalty(real_logits, real)
    penalty.backward()
    assert penalty > 0 and disc.body[0].weight.grad is not None


def test_stage1_adam_steps_lower_the_loss():
    net = tiny("gpemsr_codebook", 1).train()
    hr = texture(32)[..., 24:56, 24:56]
    losses = adam_lowers(lambda: G.codebook_objective(net, hr)[0], net.parameters())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------
# Stage II


@pytest.mark.parametrize("scale", [8, 16])
def test_indexer_targets_are_the_frozen_encoders_codes(scale):
    stage1 = tiny("gpemsr_codebook", 1)
    prior = tiny("gpemsr_prior", scale)
    prior.vq.load_state_dict(stage1.state_dict())
    assert trainable(prior) == trainable(prior.indexer) > 0
    hr = torch.rand(1, 1, 32, 64)
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", align_corners=False)
    target = prior.targets(hr)
    torch.testing.assert_close(target, stage1.autoencode(hr)[2])
    logits = prior.logits(lr)
    assert logits.shape == (1, 16, 2, 4) and target.shape == (1, 2, 4)
    loss, terms = G.indexer_objective(prior, lr, hr)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))
    loss.backward()
    assert all(p.grad is None for p in prior.vq.parameters())
    assert prior.indexer.classifier.weight.grad.abs().sum() > 0 and 0 <= terms[1] <= 1


def test_stage2_reference_and_adam_steps():
    prior = tiny("gpemsr_prior", 8).train()
    hr = texture(32)[..., :32, :64].reshape(1, 1, 32, 64)
    lr = F.interpolate(hr, scale_factor=1 / 8, mode="area")
    losses = adam_lowers(lambda: G.indexer_objective(prior, lr, hr)[0], prior.indexer.parameters())
    assert losses[-1] < losses[0]
    features, image = prior.reference(lr)
    assert image.shape == (1, 1, 32, 64)
    assert [f.shape[1:] for f in features] == [(8, 2, 4), (8, 4, 8), (8, 8, 16), (8, 16, 32)]
    prior.eval()
    with torch.no_grad():
        assert prior(torch.rand(1, 1, 3, 5)).shape == (1, 1, 24, 40)
    with pytest.raises(ValueError, match="multiples of 2"):
        prior.train()(torch.rand(1, 1, 3, 4))


# ---------------------------------------------------------------------------------------
# Flows and alignment


def test_flow_estimators_recover_translations():
    big = texture(32)
    centre = big[..., 24:56, 24:56]
    stack = torch.cat([big[..., 24 + k : 56 + k, 24 - k : 56 - k] for k in (-2, -1, 0, 1, 2)], 1)
    forward, backward = G.section_flows(stack, "lk")
    assert forward.shape == (1, 5, 2, 32, 32) and (forward[:, 2] == 0).all()
    # section_k(p) = centre(p + (−k, k)), so section_k(p + (k, −k)) = centre(p)
    expected = torch.tensor([[k, -k] for k in (-2, -1, 0, 1, 2)], dtype=torch.float32)
    inner = (..., slice(6, -6), slice(6, -6))
    torch.testing.assert_close(
        forward[inner].median(-1).values.median(-1).values[0], expected, atol=0.1, rtol=0
    )
    torch.testing.assert_close(
        backward[inner].median(-1).values.median(-1).values[0], -expected, atol=0.1, rtol=0
    )
    phase = G.phase_correlation_flow(centre, stack[:, :1])
    torch.testing.assert_close(phase[0, :, 0, 0], expected[0], atol=0.25, rtol=0)
    zero, _ = G.section_flows(stack, "zero")
    assert not zero.any()
    with pytest.raises(ValueError, match="flow method"):
        G.section_flows(stack, "spynet")


def pod_alignments(centre, shifted, flow, backward=None):
    """A fresh POD (zero-initialised offset convolutions, flow-guided) and a small
    feature pyramid: the centre aligned to itself, the shifted section aligned with
    ``flow``, and the shifted section aligned with zero flow."""
    torch.manual_seed(0)
    c = 8
    pod = G.POD(c, deform_groups=2)
    embed = torch.nn.Conv2d(1, c, 3, padding=1)
    downs = [torch.nn.Conv2d(c, c, 3, 2, 1) for _ in range(2)]

    def pyramid(image):
        levels = [embed(image)]
        for down in downs:
            levels.append(down(levels[-1]))
        return levels

    zero = torch.zeros_like(flow)
    with torch.no_grad():
        target = pod(pyramid(centre), pyramid(centre), centre, centre, zero)
        aligned = pod(pyramid(shifted), pyramid(centre), shifted, centre, flow, backward)
        unaligned = pod(pyramid(shifted), pyramid(centre), shifted, centre, zero)
    return target, aligned, unaligned


def test_pod_with_the_true_flow_aligns_a_shifted_section():
    # A fresh POD with flow_guided samples the neighbour at p + flow: aligned with the
    # true flow, the shifted section's features match the centre's aligned to itself,
    # away from the borders.
    centre = texture(64)[..., 24:88, 24:88]
    shifted = torch.roll(centre, shifts=(-4, 8), dims=(-2, -1))  # shifted(p) = centre(p − (8, −4))
    true_flow = torch.tensor([8.0, -4.0])[None, :, None, None].expand(1, 2, 64, 64)
    target, aligned, unaligned = pod_alignments(centre, shifted, true_flow)
    # borders, the roll's seam and the pyramid's zero padding spread over 3 levels
    inner = (..., slice(24, -24), slice(24, -24))
    error = (aligned - target)[inner].abs().max()
    before = (unaligned - target)[inner].abs().mean()
    assert error < 1e-6 and before > 0.2 * target[inner].abs().mean()


def test_pod_with_the_estimated_flow_aligns_a_shifted_section():
    # Section-to-section misalignment of a few LR pixels: the Lucas–Kanade flow that
    # GPEMSR estimates itself brings the shifted section's aligned features to the
    # centre's, far closer than no alignment.
    big = texture(64, border=40)
    centre = big[..., 32:96, 32:96]
    shifted = big[..., 30:94, 35:99]  # shifted(p + (−3, 2)) = centre(p)
    stack = torch.cat([shifted, shifted, centre, shifted, shifted], 1)
    flow, backward = G.section_flows(stack, "lk")
    target, aligned, unaligned = pod_alignments(centre, shifted, flow[:, 0], backward[:, 0])
    inner = (..., slice(16, -16), slice(16, -16))
    after = (aligned - target)[inner].abs().mean()
    before = (unaligned - target)[inner].abs().mean()
    assert after < 0.1 * before


SPYNET_KEYS = {
    f"basic_module.{level}.basic_module.{index}.{kind}": shape
    for level in range(6)
    for index, shape in zip(
        (0, 2, 4, 6, 8), ((32, 8), (64, 32), (32, 64), (16, 32), (2, 16)), strict=True
    )
    for kind, shape in (("weight", (*shape, 7, 7)), ("bias", shape[:1]))
}


def test_spynet_has_basicsrs_layout_and_starts_at_zero_flow(tmp_path):
    net = SPyNet()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == SPYNET_KEYS
    ref, supp = texture(40, seed=1)[..., :40, :50], texture(40, seed=2)[..., :40, :50]
    assert not net(ref, supp).any() and net(ref, supp).shape == (1, 2, 40, 50)
    # A file as BasicSR writes it (under "params", with its ImageNet constants) loads.
    state = {k: torch.randn(v) for k, v in SPYNET_KEYS.items()}
    path = tmp_path / "spynet.pth"
    torch.save({"params": {**state, "mean": torch.zeros(1, 3, 1, 1)}}, path)
    loaded = load_spynet_weights(SPyNet(), path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match=r"missing\.pth"):
        load_spynet_weights(SPyNet(), tmp_path / "missing.pth")
    torch.save({k: v for k, v in state.items() if "5.basic" not in k}, path)
    with pytest.raises(ValueError, match=r"spynet.pth lacks the keys basic_module\.5"):
        load_spynet_weights(SPyNet(), path)
    torch.save({**state, "basic_module.0.basic_module.0.bias": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"spynet\.pth holds tensors of the wrong shape"):
        load_spynet_weights(SPyNet(), path)


def test_spynet_flows_reach_the_lr_grid_in_lr_pixels():
    # A SPyNet whose finest level adds a constant (x, y) = (8, −4) on the 4× upsampled
    # sections (64², SPyNet's own grid) gives GPEMSR flows of (2, −1) LR pixels, zero
    # for the centre; 64 × 112, resized to 64 × 128, gets x = 8 · 112/128 = 7 (BasicSR's).
    net = tiny("gpemsr", 8, flow="spynet").eval()
    last = net.spynet.basic_module[-1].basic_module[-1]
    with torch.no_grad():
        last.bias.copy_(torch.tensor([8.0, -4.0]))
    for (h, w), (x, y) in (((16, 16), (2.0, -1.0)), ((16, 28), (1.75, -1.0))):
        forward, backward = net._flows(torch.rand(1, 5, h, w))
        assert forward.shape == backward.shape == (1, 5, 2, h, w)
        expected = torch.tensor([x, y])[:, None, None].expand(2, h, w)
        for t in (0, 1, 3, 4):
            torch.testing.assert_close(forward[0, t], expected)
        assert not forward[0, 2].any() and not backward[0, 2].any()


def test_spynet_trains_end_to_end_or_stays_frozen_when_loaded(tmp_path):
    net = tiny("gpemsr", 16, flow="spynet")
    net(torch.rand(1, 5, 4, 4)).mean().backward()
    grads = [p.grad for p in net.spynet.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    path = tmp_path / "spynet.pth"
    torch.save({k: 0.01 * torch.randn(v) for k, v in SPYNET_KEYS.items()}, path)
    frozen = tiny("gpemsr", 16, flow="spynet", spynet_weights=str(path)).load_pretrained()
    assert frozen.spec["spynet_weights"] == str(path)
    assert not any(p.requires_grad for p in frozen.spynet.parameters())
    assert "SPyNet from" in frozen.stand_ins()["flow"]
    assert "trained end to end" in net.stand_ins()["flow"]
    with pytest.raises(ValueError, match="spynet_weights"):
        tiny("gpemsr", 16, spynet_weights=str(path))


def test_vgg19_features_from_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="needs vgg19_weights"):
        tiny("gpemsr", 16, features="vgg19")
    path = tmp_path / "vgg19.pth"
    weights = {
        f"features.{k}": 0.1 * torch.randn(v.shape)
        for k, v in Backbone("vgg19").features.state_dict().items()
    }
    torch.save({**weights, "classifier.0.weight": torch.zeros(2, 2)}, path)
    net = tiny("gpemsr", 16, features="vgg19", vgg19_weights=str(path)).load_pretrained()
    assert torch.equal(net.vgg.features[0].weight, weights["features.0.weight"])
    assert trainable(net.vgg) == 0 and trainable(net) == trainable(tiny("gpemsr", 16))
    x = torch.rand(2, 1, 32, 32)
    assert net.feature_maps(x, 0).shape == (2, 64, 32, 32)
    assert net.feature_maps(x, 2).shape == (2, 256, 8, 8)
    assert "vgg19.pth" in net.stand_ins()["features"]
    assert "Stage I encoder" in tiny("gpemsr", 16).stand_ins()["features"]
    total, terms = G.gpemsr_objective(net.train(), torch.rand(1, 5, 4, 4), torch.rand(1, 1, 64, 64))
    total.backward()
    assert torch.isfinite(terms).all() and terms[1] > 0
    assert all(p.grad is None for p in net.vgg.parameters())


# ---------------------------------------------------------------------------------------
# Stage III


@pytest.mark.parametrize("scale", [8, 16])
def test_gpemsr_shapes_for_odd_and_even_sizes(scale):
    net = tiny("gpemsr", scale).eval()
    assert net.window == 4 and trainable(net.prior) == 0
    for h, w in [(3, 5), (4, 4)]:
        with torch.no_grad():
            sr, refs = net.forward_with_reference(torch.rand(1, 5, h, w))
        assert sr.shape == (1, 1, scale * h, scale * w) and torch.isfinite(sr).all()
        assert refs.shape == (1, 5, 1, scale * h, scale * w)
    with pytest.raises(ValueError, match="multiples of 4"):
        net.train()(torch.rand(1, 5, 6, 8))
    with pytest.raises(ValueError, match="expects 5 sections"):
        net(torch.rand(1, 3, 8, 8))


def test_gpemsr_single_section_and_given_flows():
    net = tiny("gpemsr", 8, single_section=True).eval()
    assert not hasattr(net, "align") and not hasattr(net, "fusion") and net.window == 2
    with torch.no_grad():
        assert net(torch.rand(2, 1, 3, 3)).shape == (2, 1, 24, 24)
        assert net(torch.rand(1, 5, 4, 6)).shape == (1, 1, 32, 48)
    net = tiny("gpemsr", 16, flow="zero").eval()
    x = torch.rand(1, 5, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x, torch.zeros(1, 5, 2, 4, 4)))


def test_gpemsr_spec_round_trip_and_ablations():
    net = tiny("gpemsr", 16)
    again = build_network(net.spec)
    again.load_state_dict(net.state_dict())
    for kwargs in ({"align": "resblocks"}, {"fusion": "resblocks"}, {"mpf": False}):
        variant = tiny("gpemsr", 8, **kwargs).eval()
        with torch.no_grad():
            assert variant(torch.rand(1, 5, 4, 4)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="power of two"):
        tiny("gpemsr", 12)


def test_contextual_loss_and_weights():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5)
    assert G.contextual_loss(x, x) < 1e-3
    assert G.contextual_loss(torch.randn(2, 6, 5, 5), x) > 0.1
    assert G.fidelity_weight(16) == 0.01 and G.fidelity_weight(8) == 0.001


def test_stage3_adam_steps_lower_the_loss_and_leave_the_prior_alone():
    net = tiny("gpemsr", 8).train()
    hr = texture(32)[..., 24:56, 24:56]
    lr = F.interpolate(hr, scale_factor=1 / 8, mode="area").expand(1, 5, 4, 4)
    before = {k: v.clone() for k, v in net.prior.state_dict().items()}
    total, terms = G.gpemsr_objective(net, lr, hr)
    torch.testing.assert_close(total, terms[0] + 0.001 * terms[1])
    losses = adam_lowers(lambda: G.gpemsr_objective(net, lr, hr)[0], net.parameters())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, net.prior.state_dict()[k]) for k, v in before.items())
    assert net.mpf.fuse[0].weight.grad is not None and net.align.dcn[0].weight.grad is not None


@pytest.mark.parametrize(("scale", "count"), [(16, 5_610_430), (8, 4_573_438)])
def test_paper_size_trainable_parameters(scale, count):
    # the authors' code's parameters that reach the output; the paper's Tables 1 and 2
    # list 147,712 fewer (5.4627 M, 4.4257 M)
    net = build_network({"type": "gpemsr", "scale": scale})
    assert trainable(net) == count
    assert abs(count - 147_712 - {16: 5.4627e6, 8: 4.4257e6}[scale]) < 100
    assert sum(p.numel() for p in net.prior.vq.parameters()) == 42_553_601
