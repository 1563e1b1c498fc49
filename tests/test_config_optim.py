"""Typed YAML configs, overrides, and the Muon/AdamW split."""
import pytest
import torch

from fastlam.config import ConfigError, load_config
from fastlam.models import LatentActionWorldModel, ModelConfig
from fastlam.loop import train_steps
from fastlam.optim import OptimConfig, build_optimizers, build_schedulers, split_params, warmup_cosine
from fastlam.train import TrainConfig


def test_shipped_configs_load():
    for name in ("configs/tiny_cpu.yaml", "configs/paper_vitl.yaml"):
        cfg = load_config(TrainConfig, name)
        assert cfg.model.action_dim == 128
    paper = load_config(TrainConfig, "configs/paper_vitl.yaml")
    assert (paper.model.predictor.width, paper.model.predictor.depth, paper.model.predictor.heads) == (1024, 24, 16)
    assert (paper.batch_size, paper.steps, paper.optim.muon_lr, paper.optim.adamw_lr) == (1024, 30000, 0.02, 6.25e-4)


def test_overrides_are_typed_and_nested():
    cfg = load_config(TrainConfig, "configs/tiny_cpu.yaml",
                      ["steps=7", "model.regularizer.kind=sparse", "model.regularizer.l_l1=0.1", "optim.use_muon=false"])
    assert cfg.steps == 7 and cfg.model.regularizer.kind == "sparse"
    assert cfg.model.regularizer.l_l1 == 0.1 and cfg.optim.use_muon is False


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.encoder.patchsize=8", r"unknown config key 'model.encoder.patchsize'"),
        ("stepz=3", r"unknown config key 'stepz'"),
        ("steps=many", r"steps: expected int"),
        ("model.frames=true", r"model.frames: expected int"),
        ("nonsense", r"expected key.sub=value"),
        # a value of the wrong type: the key and the type it expected
        ("optim.weight_decay=abc", r"optim.weight_decay: expected float, got 'abc'"),
        ("optim.adamw_lr=true", r"optim.adamw_lr: expected float, got True"),
        ("steps=2.5", r"steps: expected int, got 2.5"),
        ("steps=1e3", r"steps: expected int, got '1e3'"),
        ("steps=null", r"steps: expected int, got None"),
        ("progress=1", r"progress: expected bool, got 1"),
        ("progress=yesplease", r"progress: expected bool"),
        ("out_dir=[a, b]", r"out_dir: expected str"),
        ("device=3", r"device: expected str, got 3"),
        ("optim.adamw_betas=0.9", r"optim.adamw_betas: expected tuple\[float, float\]"),
        ("optim.adamw_betas=[0.9]", r"optim.adamw_betas: expected tuple\[float, float\] \(2 items\)"),
        ("optim.adamw_betas=[0.9, x]", r"optim.adamw_betas\[1\]: expected float, got 'x'"),
        ("model.encoder.width=2.5", r"model.encoder.width: expected int or None, got 2.5"),
        ("model.encoder.checkpoint=5", r"model.encoder.checkpoint: expected str or None, got 5"),
        ("model.idm=3", r"model.idm: expected a mapping"),
    ],
)
def test_bad_config_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, "configs/tiny_cpu.yaml", [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="--config: file not found"):
        load_config(TrainConfig, "configs/does_not_exist.yaml")


def test_muon_gets_exactly_the_hidden_matrices():
    model = LatentActionWorldModel(ModelConfig(image_size=32, frames=4))
    muon, adamw = split_params(model)
    assert muon and adamw
    assert all(p.ndim == 2 for p in muon)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".blocks." in f".{names[id(p)]}" for p in muon)
    assert not any(id(p) in {id(q) for q in muon} for p in model.encoder.parameters())  # frozen
    assert id(model.predictor.head.weight) in {id(p) for p in adamw}
    opts = build_optimizers(model, OptimConfig())
    assert [type(o).__name__ for o in opts] == ["Muon", "AdamW"]
    assert sum(len(g["params"]) for o in opts for g in o.param_groups) == len(muon) + len(adamw)


def test_warmup_then_cosine():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02) and f(99) < 0.01
    # Warmup given in steps (the controller's and the baseline's configs): the same curve.
    g = warmup_cosine(100, warmup_steps=10)
    assert [g(i) for i in range(105)] == [f(i) for i in range(105)]
    h = warmup_cosine(1000, warmup_steps=300, min_lr_frac=0.1)
    assert h(0) == pytest.approx(1 / 300) and h(299) == 1.0 and h(1000) == pytest.approx(0.1)
    model = torch.nn.Linear(4, 4)
    opts = [torch.optim.AdamW(model.parameters(), lr=1.0)]
    (sched,) = build_schedulers(opts, 100, OptimConfig())
    assert opts[0].param_groups[0]["lr"] == pytest.approx(0.1)


def test_the_shared_loop_takes_the_steps_a_hand_written_loop_takes():
    """fastlam.loop.train_steps: zero, backward, clip, every optimiser, every scheduler; the same
    weights and losses as the loop it replaced in the study, the controller and the baseline."""
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opts = [torch.optim.AdamW(model[0].parameters(), lr=1e-2), torch.optim.SGD(model[2].parameters(), lr=1e-1)]
        return model, opts, [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine(20, 0.2)) for o in opts]

    x, y = torch.randn(64, 6), torch.randn(64, 2)
    model, opts, scheds = make()
    g = torch.Generator().manual_seed(1)
    hand = []
    for _ in range(20):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss = (model(x[idx]) - y[idx]).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        for s in scheds:
            s.step()
        hand.append(loss.item())
    shared_model, opts, scheds = make()
    g = torch.Generator().manual_seed(1)
    logged = []
    losses = train_steps(shared_model, lambda _: (shared_model(x[idx := torch.randint(0, 64, (16,), generator=g)])
                                                 - y[idx]).pow(2).mean(),
                         20, opts, scheds, grad_clip=0.5, log_every=5, log=lambda s, l: logged.append((s, l)))
    assert losses == hand and [s for s, _ in logged] == [5, 10, 15, 20] and logged[-1][1] == hand[-1]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shared_model.state_dict().values()))
    assert not shared_model.training
