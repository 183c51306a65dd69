"""Optimizer configs: the schedules' shapes, Muon's orthogonalised update, and settings that survive a checkpoint."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import torch.nn.functional as F

from lmpre.errors import ConfigError
from lmpre.models import Transformer, TransformerConfig
from lmpre.objectives import AdamW, Muon, Schedule
from lmpre.objectives.muon import MuonWithAdamW, newton_schulz
from lmpre.objectives.optim import ScheduledLR, hidden_matrices, optimizer_config


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    fields = {"vocab_size": 40, "d_model": 32, "n_layer": 2, "n_head": 2, "max_seq_len": 16, "bias": True}
    return Transformer(TransformerConfig(**{**fields, **overrides}))


# ------------------------------------------------------------------------------------------------------- schedules


def test_cosine_warms_up_linearly_then_decays_to_its_minimum() -> None:
    schedule = Schedule(warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    factors = [schedule.lr_factor(step, 100) for step in range(101)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))  # never rises after the warm-up
    assert factors[55] == pytest.approx(0.55)  # halfway: the midpoint of 1 and 0.1
    assert factors[100] == pytest.approx(0.1)


def test_wsd_warms_up_stays_flat_then_decays_linearly_to_its_minimum_at_the_end() -> None:
    schedule = Schedule(warmup_steps=10, decay="wsd", min_lr_ratio=0.0, decay_fraction=0.2)
    factors = [schedule.lr_factor(step, 110) for step in range(111)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10:90] == [1.0] * 80  # stable: the last 20% of the 100 steps after the warm-up decay
    assert factors[90:111] == pytest.approx([1 - s / 20 for s in range(21)])  # linear, to 0 at the last step
    assert schedule.lr_factor(500, 110) == 0.0  # past the end it stays at the minimum


@pytest.mark.parametrize(
    ("setting", "message"), [({"decay": "step"}, "optim.decay='step'"), ({"decay_fraction": 0}, "decay_fraction=0")]
)
def test_bad_schedule_settings_name_the_setting(setting: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AdamW(**setting)


def test_the_total_can_change_after_the_scheduler_is_built_and_stays_out_of_its_state() -> None:
    model = tiny_model()
    optimizer, scheduler = AdamW(lr=1.0, warmup_steps=0, decay="wsd", decay_fraction=0.5, min_lr_ratio=0.0).build(
        model, total_steps=10
    )
    assert isinstance(scheduler, ScheduledLR)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.8)  # step 6 of 10: decaying over steps 5..10
    scheduler.total_steps = 100  # e.g. a budget callback: the decay now starts at step 50
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 1.0
    state = scheduler.state_dict()
    assert "schedule" not in state
    assert "total_steps" not in state
    torch.save(state, buffer := io.BytesIO())
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # plain containers: loads in a weights-only checkpoint


# ------------------------------------------------------------------------------------------------------------ Muon


@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (64, 64)])
def test_newton_schulz_gives_an_orthogonal_matrix_with_the_same_singular_vectors(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    u, _, vh = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    spread = torch.logspace(0, -1.5, min(shape))  # singular values across a factor of 30
    matrix = u @ torch.diag(spread * 7.0) @ vh
    result = newton_schulz(matrix, steps=5)
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.6
    assert singular.max() < 1.25  # ~1, as far as the quintic converges
    # The singular vectors are kept: in the matrix's own bases the result is (almost) diagonal.
    in_bases = u.T @ result @ vh.T
    assert torch.allclose(in_bases, torch.diag(torch.diagonal(in_bases)), atol=0.05)
    assert newton_schulz(matrix * 1000).allclose(result, atol=1e-4)  # independent of the gradient's scale


def test_muon_updates_hidden_matrices_and_adamw_the_rest() -> None:
    model = tiny_model(tie_embeddings=True)
    matrices = hidden_matrices(model)
    names = {n for n, p in model.named_parameters() if any(p is m for m in matrices)}
    assert names == {
        f"encoder.blocks.{i}.{w}.weight"
        for i in range(2)
        for w in ("attn.q", "attn.kv", "attn.proj", "mlp.up", "mlp.proj")
    }  # not the embeddings, the (tied) head, positions, norms or biases
    optimizer = Muon(lr=0.05, adam_lr=0.01).optimizer(model)
    groups = [(g["use_muon"], g["lr"], sum(p.numel() for p in g["params"])) for g in optimizer.param_groups]
    assert [(muon, lr) for muon, lr, _ in groups] == [(True, 0.05), (False, 0.01), (False, 0.01)]
    assert groups[0][2] == sum(m.numel() for m in matrices)
    assert sum(n for _, _, n in groups) == sum(p.numel() for p in model.parameters())


def test_a_muon_step_moves_each_matrix_by_an_orthogonal_update_of_size_lr() -> None:
    weight = torch.nn.Parameter(torch.zeros(16, 64))
    optimizer = MuonWithAdamW([{"params": [weight]}], lr=0.1, momentum=0.0, nesterov=False)
    weight.grad = torch.randn(16, 64)
    optimizer.step()
    singular = torch.linalg.svdvals(weight.detach() / 0.1)
    assert singular.min() > 0.6
    assert singular.max() < 1.25
    assert torch.sign(weight * weight.grad).sum() < 0  # against the gradient


def test_muon_refuses_a_vector_in_a_muon_group() -> None:
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))]}])


# ---------------------------------------------------------------------------------------------------- fused AdamW


def adamw_steps(config: AdamW, steps: int = 5) -> tuple[Transformer, torch.optim.Optimizer]:
    # No biases: a key's bias gets a gradient of rounding noise only (softmax ignores it), which Adam's
    # normalisation blows up differently for any two summation orders.
    model = tiny_model(bias=False)
    optimizer, scheduler = config.build(model, total_steps=steps)
    batch = torch.randint(40, (4, 17), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer


def test_adamw_is_fused_on_cpu_and_steps_as_torchs_per_tensor_loop() -> None:
    settings = {"lr": 3e-2, "warmup_steps": 2, "weight_decay": 0.1}
    fused, fused_optimizer = adamw_steps(AdamW(**settings))
    looped, looped_optimizer = adamw_steps(AdamW(**settings, fused=False))
    assert fused_optimizer.defaults["fused"] is True
    assert not looped_optimizer.defaults["fused"]
    assert not looped_optimizer.defaults["foreach"]
    moved, initial = 0.0, tiny_model(bias=False).parameters()
    for (name, a), b, start in zip(fused.named_parameters(), looped.parameters(), initial, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        moved = max(moved, (a - start).abs().max().item())
    assert moved > 0.05  # five steps of lr 3e-2 moved the weights: the comparison is not of untouched tensors


def test_adamw_is_not_fused_where_the_trainer_forbids_it_and_says_so_when_asked_to_be() -> None:
    model = tiny_model()
    assert AdamW().optimizer(model, fusable=False).defaults["fused"] is None  # torch's default
    with pytest.raises(ConfigError, match="refuses to clip a fused optimizer"):
        AdamW(fused=True).optimizer(model, fusable=False)
    with pytest.raises(ConfigError, match=r"optim\.fused=true needs floating-point parameters on"):
        AdamW(fused=True).optimizer(torch.nn.Linear(3, 3, device="meta"))
    assert AdamW().optimizer(torch.nn.Linear(3, 3, device="meta")).defaults["fused"] is None


@pytest.mark.parametrize("config", [Muon(lr=0.02, adam_lr=3e-3, warmup_steps=0), AdamW(lr=3e-3, warmup_steps=0)])
def test_a_tiny_model_learns_a_fixed_batch(config: AdamW | Muon) -> None:
    model = tiny_model()
    optimizer, _ = config.build(model, total_steps=30)
    batch = torch.randint(40, (4, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_muon_state_round_trips_through_a_weights_only_checkpoint() -> None:
    model = tiny_model()
    optimizer = Muon().optimizer(model)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), buffer := io.BytesIO())
    buffer.seek(0)
    restored = Muon().optimizer(model)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


# ---------------------------------------------------------------------------------------------------- as settings


@pytest.mark.parametrize("config", [AdamW(lr=5e-4, betas=(0.9, 0.99)), Muon(lr=0.05, decay="wsd")])
def test_settings_round_trip_through_the_plain_dict_a_checkpoint_holds(config: AdamW | Muon) -> None:
    saved = config.to_dict()
    assert saved["name"] == config.name
    assert optimizer_config(saved) == config


def test_settings_without_a_name_are_adamw_and_unknown_ones_are_refused() -> None:
    assert optimizer_config({"lr": 3e-4}) == AdamW(lr=3e-4)  # checkpoints from before there was a choice
    with pytest.raises(ConfigError, match="optim name='sgd' is not one of adamw, muon"):
        optimizer_config({"name": "sgd"})
    with pytest.raises(ConfigError, match="optim=adamw has no setting momentum"):
        optimizer_config({"momentum": 0.9})
