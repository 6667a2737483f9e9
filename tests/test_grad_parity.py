"""Gradients and AdamW against torch autograd on HF transformers 4.57.6.

For each small random config and each mask kind, the same case runs three times: npperceiver in float32,
HF in float32 and HF in float64 (the reference). Every parameter's gradient and the inputs' gradient are
compared with the float64 run, per tensor, as ``max |g - g64| / max(1, max |g64|)``; the worst over the
tensors of a case must be no worse than ``FACTOR`` times torch's own float32 error on that case (measured
in the same run, not guessed; counted as at least ``TORCH_FLOOR``, 16 float32 epsilons, where torch's
round-off happens to cancel on a tiny case), and below ``ABS_BOUND`` whatever torch does.

* ``PerceiverModel.vjp`` vs ``torch.autograd`` of ``last_hidden_state`` with a random cotangent: no mask,
  an inputs mask, an inputs mask with an all-masked row, 1-D / 2-D head masks with 0, fractional and >1
  multipliers, a latent mask (through HF's ``PerceiverEncoder`` directly: HF's model has none), all at once.
* ``PerceiverForMaskedLM.loss_and_grads`` vs ``loss.backward()`` (labels with -100, masks, head masks).
* ``AdamW`` vs ``torch.optim.AdamW``: the same gradients give the same parameters and moments; a training
  run of several steps gives the same losses.

Skips without torch / transformers 4.57.x. A one-line summary of the worst errors is printed at the end.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="gradient parity needs torch")
transformers = pytest.importorskip("transformers", reason="gradient parity needs transformers 4.57.x")
if not transformers.__version__.startswith("4.57."):
    pytest.skip(f"gradient parity targets transformers 4.57.x (head_mask), found {transformers.__version__}",
                allow_module_level=True)

from hf_reference import build_pair, hf_encoder_masks, randomize_, seed_of, to_torch  # noqa: E402

import npperceiver as npp  # noqa: E402

#: ours may be this many times worse than torch's own float32 error against float64 on the same case
FACTOR = 4.0
#: torch's error below this counts as this much (a tiny case where torch's round-off happened to cancel)
TORCH_FLOOR = 1e-6
#: and never worse than this (relative to max(1, max |g64|) of each tensor)
ABS_BOUND = 1e-4
BATCH = 3  # row 0 never masked; rows 1, 2 carry the masks

# name -> (M, HF config). Several blocks (shared weights), qk/v set, "q" cross shape, no query residual,
# heads that differ, wide MLPs, every activation.
CONFIGS = {
    "base": (7, dict(num_latents=6, d_latents=16, d_model=12, num_blocks=1, num_self_attends_per_block=2,
                     num_self_attention_heads=2, num_cross_attention_heads=2)),
    "blocks3_relu": (9, dict(num_latents=5, d_latents=16, d_model=8, num_blocks=3, num_self_attends_per_block=2,
                             num_self_attention_heads=4, num_cross_attention_heads=2,
                             cross_attention_widening_factor=2, hidden_act="relu")),
    "qk8_v16_q": (6, dict(num_latents=6, d_latents=16, d_model=10, num_blocks=2, num_self_attends_per_block=2,
                          num_self_attention_heads=2, num_cross_attention_heads=4, qk_channels=8, v_channels=16,
                          cross_attention_shape_for_attention="q")),
    "no_residual_gelu_new": (6, dict(num_latents=6, d_latents=16, d_model=12, num_blocks=2,
                                     num_self_attends_per_block=1, num_self_attention_heads=4,
                                     num_cross_attention_heads=2, use_query_residual=False,
                                     self_attention_widening_factor=3, hidden_act="gelu_new")),
    "silu_heads_3": (5, dict(num_latents=4, d_latents=12, d_model=6, num_blocks=2, num_self_attends_per_block=1,
                             num_self_attention_heads=3, num_cross_attention_heads=3, hidden_act="silu")),
    "one_head_tanh": (4, dict(num_latents=3, d_latents=8, d_model=4, num_blocks=1, num_self_attends_per_block=1,
                              num_self_attention_heads=1, num_cross_attention_heads=1,
                              hidden_act="gelu_pytorch_tanh")),
}

CASES = {
    "no_mask": dict(),
    "inputs_mask": dict(inputs="partial"),
    "all_masked_row": dict(inputs="all_masked"),
    "head_mask_1d": dict(head="1d"),
    "head_mask_2d": dict(head="2d"),
    "latent_mask": dict(latents=True),
    "all_masks": dict(inputs="all_masked", head="2d", latents=True),
}

#: (what, config, case, our worst error, torch float32's worst error), for the summary
RESULTS: list[tuple[str, str, str, float, float]] = []


# ---------------------------------------------------------------------------- helpers
def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, max |ref|)."""
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def worst(grads: dict, ref: dict) -> tuple[float, str]:
    errors = {k: rel_error(grads[k], ref[k]) for k in ref}
    key = max(errors, key=errors.get)
    return errors[key], key


def check_against_torch(what, config, case, ours, t32, t64):
    """Same keys (in HF's order), same shapes, float32, finite; error within FACTOR x torch's and ABS_BOUND."""
    assert list(ours) == list(t64), f"{what}: keys differ from HF's named_parameters()"
    for key, g in ours.items():
        assert g.shape == t64[key].shape and g.dtype == np.float32, f"{what}: {key} {g.shape} {g.dtype}"
        assert np.all(np.isfinite(g)), f"{what}: {key} has non-finite values"
    err, key = worst(ours, t64)
    torch_err, torch_key = worst(t32, t64)
    RESULTS.append((what, config, case, err, torch_err))
    assert err <= FACTOR * max(torch_err, TORCH_FLOOR), (
        f"{what} {config}/{case}: worst error {err:.3g} ({key}) > {FACTOR} x torch float32's {torch_err:.3g} "
        f"({torch_key})")
    assert err <= ABS_BOUND, f"{what} {config}/{case}: worst error {err:.3g} ({key})"


def keep_mask(rng, B, T, all_masked_row=None):
    """(B, T) int 0/1: row 0 all kept; other rows keep at least one and drop at least one."""
    keep = np.ones((B, T), np.int64)
    for b in range(1, B):
        keep[b] = rng.random(T) < 0.6
        kept, dropped = rng.permutation(T)[:2]
        keep[b, kept], keep[b, dropped] = 1, 0
    if all_masked_row is not None:
        keep[all_masked_row] = 0
    return keep


def head_mask(kind, cfg):
    """(Hs,) or (L, Hs) multipliers with a 0 (a silenced head), fractions and a factor above 1."""
    H, L = cfg["num_self_attention_heads"], cfg["num_blocks"] * cfg["num_self_attends_per_block"]
    values = np.array([0.0, 0.5, 1.5, 1.0, 0.25], np.float32)
    if kind == "1d":
        return np.resize(values, H)
    return np.stack([np.resize(np.roll(values, i), H) for i in range(L)])


# ---------------------------------------------------------------------------- PerceiverModel.vjp
@functools.cache
def model_pair(name):
    """HF model in float32 and a float64 copy, and the npperceiver twin."""
    p = build_pair(f"grad-{name}", CONFIGS[name][1])
    return p.hf, copy.deepcopy(p.hf).double(), p.np


def make_case(name, case):
    M, cfg = CONFIGS[name]
    spec = CASES[case]
    rng = np.random.default_rng(seed_of("grad-case", name, case))
    x = rng.standard_normal((BATCH, M, cfg["d_model"])).astype(np.float32)
    cotangent = rng.standard_normal((BATCH, cfg["num_latents"], cfg["d_latents"])).astype(np.float32)
    am = lm = hm = None
    if "inputs" in spec:
        am = keep_mask(rng, BATCH, M, all_masked_row=1 if spec["inputs"] == "all_masked" else None)
    if spec.get("latents"):
        lm = keep_mask(rng, BATCH, cfg["num_latents"], all_masked_row=2)
    if "head" in spec:
        hm = head_mask(spec["head"], cfg)
    return x, cotangent, am, lm, hm


def torch_vjp(hf, x, cotangent, am, lm, hm):
    """torch.autograd: the gradient of every parameter (HF's named_parameters order) and of the inputs."""
    dtype = next(hf.parameters()).dtype
    inputs = torch.from_numpy(x).to(dtype).requires_grad_(True)
    hf.zero_grad(set_to_none=True)
    if lm is None:  # PerceiverModel.forward itself
        hm_t = None if hm is None else to_torch(hm).to(dtype)
        out = hf(inputs=inputs, attention_mask=to_torch(am), head_mask=hm_t).last_hidden_state
    else:  # the latent mask exists only as PerceiverEncoder's attention_mask
        masks = hf_encoder_masks(hf, x.shape[0], x.shape[1], am, lm, hm)
        masks = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in masks.items()}
        out = hf.encoder(hf.embeddings(batch_size=x.shape[0]), attention_mask=masks["attention_mask"],
                         head_mask=masks["head_mask"], inputs=inputs,
                         inputs_mask=masks["inputs_mask"]).last_hidden_state
    out.backward(torch.from_numpy(cotangent).to(dtype))
    grads = {k: p.grad.detach().numpy() for k, p in hf.named_parameters()}
    grads["inputs"] = inputs.grad.detach().numpy()
    return grads


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_vjp_matches_torch_autograd(name, case):
    hf32, hf64, model = model_pair(name)
    x, cotangent, am, lm, hm = make_case(name, case)
    grads, inputs_grad = model.vjp(x, cotangent, attention_mask=am, head_mask=hm, latent_mask=lm)
    assert list(grads) == list(model.state_dict()) and inputs_grad.shape == x.shape
    ours = dict(grads, inputs=inputs_grad)
    check_against_torch("vjp", name, case, ours, torch_vjp(hf32, x, cotangent, am, lm, hm),
                        torch_vjp(hf64, x, cotangent, am, lm, hm))
    if am is not None:  # a masked input gets exactly 0 gradient, unless its whole row is masked
        partial = am.any(axis=1, keepdims=True)  # (B, 1): rows with at least one kept input
        dropped = (am == 0) & partial  # (B, M)
        assert np.all(inputs_grad[dropped] == 0)


# ---------------------------------------------------------------------------- PerceiverForMaskedLM
MLM_CONFIGS = {
    "small": dict(num_latents=4, d_latents=16, d_model=8, num_blocks=2, num_self_attends_per_block=2,
                  num_self_attention_heads=2, num_cross_attention_heads=2, max_position_embeddings=12),
    "qk8_v16_noresidual": dict(num_latents=6, d_latents=16, d_model=16, num_blocks=1, num_self_attends_per_block=2,
                               num_self_attention_heads=4, num_cross_attention_heads=2, qk_channels=8,
                               v_channels=16, use_query_residual=False, cross_attention_widening_factor=2,
                               max_position_embeddings=14),
    "q_shape_gelu_new": dict(num_latents=5, d_latents=24, d_model=16, num_blocks=2, num_self_attends_per_block=1,
                             num_self_attention_heads=4, num_cross_attention_heads=4,
                             cross_attention_shape_for_attention="q", hidden_act="gelu_new",
                             max_position_embeddings=10),
}
MLM_CASES = {
    "labels": dict(),
    "full_length": dict(full=True),
    "attention_mask": dict(inputs="partial"),
    "all_masked_row": dict(inputs="all_masked"),
    "head_mask_1d": dict(head="1d"),
    "everything": dict(full=True, inputs="partial", head="2d"),
}


@functools.cache
def mlm_pair(name):
    cfg = MLM_CONFIGS[name]
    torch.manual_seed(seed_of("torch-grad-mlm", name))
    hf = transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**cfg)).eval()
    randomize_(hf, np.random.default_rng(seed_of("weights-grad-mlm", name)))
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    model = npp.PerceiverForMaskedLM.from_state_dict(npp.PerceiverConfig.from_dict(cfg), sd)
    return hf, copy.deepcopy(hf).double(), model


def make_mlm_case(name, case):
    cfg, spec = MLM_CONFIGS[name], MLM_CASES[case]
    P = cfg["max_position_embeddings"]
    rng = np.random.default_rng(seed_of("grad-mlm-case", name, case))
    M = P if spec.get("full") else P // 2 + 1
    input_ids = rng.integers(0, 262, (BATCH, M))
    input_ids[0, :3] = input_ids[0, 3]  # a repeated token: its embedding's gradient must add up
    labels = rng.integers(0, 262, (BATCH, P))
    labels[rng.random((BATCH, P)) < 0.4] = -100
    kwargs = {}
    if "inputs" in spec:
        all_masked_row = 2 if spec["inputs"] == "all_masked" else None
        kwargs["attention_mask"] = keep_mask(rng, BATCH, M, all_masked_row=all_masked_row)
    if "head" in spec:
        kwargs["head_mask"] = head_mask(spec["head"], cfg)
    return input_ids, labels, kwargs


def torch_loss_and_grads(hf, input_ids, labels, kwargs):
    dtype = next(hf.parameters()).dtype
    hf.zero_grad(set_to_none=True)
    t = {k: to_torch(v) for k, v in kwargs.items()}
    if "head_mask" in t:
        t["head_mask"] = t["head_mask"].to(dtype)
    out = hf(input_ids=torch.from_numpy(input_ids), labels=torch.from_numpy(labels), **t)
    out.loss.backward()
    return out.loss.item(), {k: p.grad.detach().numpy() for k, p in hf.named_parameters()}


@pytest.mark.parametrize("case", list(MLM_CASES))
@pytest.mark.parametrize("name", list(MLM_CONFIGS))
def test_loss_and_grads_match_torch_autograd(name, case):
    hf32, hf64, model = mlm_pair(name)
    input_ids, labels, kwargs = make_mlm_case(name, case)
    loss, grads = model.loss_and_grads(input_ids, labels, **kwargs)
    loss32, g32 = torch_loss_and_grads(hf32, input_ids, labels, kwargs)
    loss64, g64 = torch_loss_and_grads(hf64, input_ids, labels, kwargs)
    assert list(grads) == list(model.state_dict())
    assert isinstance(loss, np.float32)
    assert abs(loss - loss64) <= FACTOR * max(abs(loss32 - loss64), 1e-7 * abs(loss64)), (loss, loss32, loss64)
    check_against_torch("loss_and_grads", name, case, grads, g32, g64)


# ---------------------------------------------------------------------------- AdamW
ADAM_SETTINGS = [dict(), dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
                 dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=0.0)]


@pytest.mark.parametrize("settings", ADAM_SETTINGS, ids=["defaults", "lr3e-2_wd0.1", "beta0.5_no_decay"])
def test_adamw_step_matches_torch_on_the_same_gradients(settings):
    """The optimizer alone: the same gradient sequence, fed to ours and to torch's, gives the same moments and
    parameters after every step, to a few float32 ulps (torch fuses some multiply-adds and its vectorised
    sqrt is not correctly rounded; see npperceiver/optim.py)."""
    hf, _, model = mlm_pair("small")
    model = npp.PerceiverForMaskedLM(model.config, copy.deepcopy(model.params))
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in model.state_dict().items()}
    ours, theirs = npp.AdamW(model, **settings), torch.optim.AdamW(list(params.values()), **settings)
    rng = np.random.default_rng(seed_of("adamw-same-grads", str(settings)))
    for step in range(6):
        input_ids, labels, _ = make_mlm_case("small", "labels")
        _, grads = model.loss_and_grads(rng.permutation(input_ids), labels)
        for k, p in params.items():
            p.grad = torch.from_numpy(grads[k].copy())
        theirs.step()
        ours.step(grads)
        lr = settings.get("lr", 1e-3)
        for k, p in params.items():  # each to a few float32 ulps of the largest number that went into it
            state, g = theirs.state[p], float(np.max(np.abs(grads[k])))
            for what, got, expected, scale in (
                ("param", model.state_dict()[k], p.detach().numpy(), lr),
                ("exp_avg", ours.exp_avg[k], state["exp_avg"].numpy(), g),
                ("exp_avg_sq", ours.exp_avg_sq[k], state["exp_avg_sq"].numpy(), g * g),
            ):
                err = float(np.max(np.abs(got - expected)))
                bound = 1e-6 * (float(np.max(np.abs(expected))) + scale)
                assert err <= bound, f"step {step}: {what} of {k} off by {err:.3g} > {bound:.3g}"
        assert ours.step_count == int(theirs.state[params["embedding_decoder.bias"]]["step"])


def test_adamw_training_run_matches_torch():
    """Forward, backward and AdamW together, five steps on the same batch, ours against HF + torch.optim.AdamW:
    the losses agree at every step, and so do the parameters -- all but the key biases, whose true gradient
    is exactly 0 (adding a constant to a row of scores changes no softmax): there both sides hand Adam
    float32 round-off, which it scales up to steps of about lr, differently on each side."""
    hf, _, model = mlm_pair("small")
    hf = copy.deepcopy(hf)
    model = npp.PerceiverForMaskedLM(model.config, copy.deepcopy(model.params))
    settings = dict(lr=1e-2, weight_decay=0.05)
    ours, theirs = npp.AdamW(model, **settings), torch.optim.AdamW(hf.parameters(), **settings)
    input_ids, labels, kwargs = make_mlm_case("small", "everything")
    losses = []
    for _ in range(5):
        loss, grads = model.loss_and_grads(input_ids, labels, **kwargs)
        ours.step(grads)
        hf_loss, _ = torch_loss_and_grads(hf, input_ids, labels, kwargs)
        theirs.step()
        losses.append((float(loss), hf_loss))
    ours_losses, hf_losses = np.array(losses).T
    assert hf_losses[-1] < hf_losses[0] - 0.1  # it learns
    np.testing.assert_allclose(ours_losses, hf_losses, rtol=2e-5)
    RESULTS.append(("adamw-run", "small", "5 steps", float(np.max(np.abs(ours_losses - hf_losses) / hf_losses)), 0.0))
    named = dict(hf.named_parameters())
    for key, value in model.state_dict().items():
        if not key.endswith("key.bias"):
            np.testing.assert_allclose(value, named[key].detach().numpy(), rtol=0, atol=2e-4, err_msg=key)


@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    """npp.clip_grad_norm == torch.nn.utils.clip_grad_norm_: the same total norm, the same scaled gradients."""
    _, _, model = mlm_pair("small")
    input_ids, labels, _ = make_mlm_case("small", "labels")
    _, grads = model.loss_and_grads(input_ids, labels)
    params = [torch.nn.Parameter(torch.from_numpy(g.copy())) for g in grads.values()]
    for p, g in zip(params, grads.values()):
        p.grad = torch.from_numpy(g.copy())
    expected = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    total = npp.clip_grad_norm(grads, max_norm)
    assert total.dtype == np.float32 and total == pytest.approx(expected, rel=1e-6)
    for p, g in zip(params, grads.values()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------- summary
def test_zz_worst_gradient_error_summary(capsys):
    """The worst gradient errors over every comparison above (runs last: pytest keeps file order)."""
    grads = [r for r in RESULTS if r[0] != "adamw-run"]
    if not grads:
        pytest.skip("no gradient comparison ran in this session")
    what, config, case, err, torch_err = max(grads, key=lambda r: r[3])
    ratio = max(r[3] / max(r[4], TORCH_FLOOR) for r in grads)
    worst_torch = max(r[4] for r in grads)
    with capsys.disabled():
        print(f"\ngradient parity vs torch {torch.__version__} autograd (float64 reference), {len(grads)} cases: "
              f"worst error ours {err:.2e} ({what} {config}/{case}), torch float32 {worst_torch:.2e}; "
              f"worst ratio ours/torch {ratio:.2f} (bound {FACTOR:g})")
    assert ratio <= FACTOR
