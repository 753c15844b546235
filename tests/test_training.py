"""Training: stages and groups, loss goes down, resume after a hard kill, DDP = accumulation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny
from visionllm2.config import ConfigError
from visionllm2.training.config import StageSpec, load_train_config
from visionllm2.training.stages import clip_gradients, clip_sets, cosine_with_warmup, param_groups

HELPERS = Path(__file__).with_name("helpers")
SCRIPT = HELPERS / "train_script.py"


def run_script(out: Path, *args: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(torchrun),
            "--master_port",
            "29517",
            str(SCRIPT),
            str(out),
            *args,
        ]
    else:
        cmd = [sys.executable, str(SCRIPT), str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def test_stage_groups_freeze_and_scale():
    model = make_tiny()
    groups = param_groups(model, StageSpec(name="stage1", steps=1, lr=1.0), weight_decay=0.1)
    trained = {g["group"] for g in groups}
    assert trained == {"projector", "llm", "region"}
    assert not any(p.requires_grad for p in model.decoders.parameters())
    assert not any(p.requires_grad for p in model.super_link.parameters())
    groups = param_groups(model, StageSpec(name="stage2", steps=1, lr=1.0), weight_decay=0.1)
    lrs = {g["group"]: g["lr"] for g in groups}
    assert lrs["llm"] == pytest.approx(0.1) and lrs["links"] == 1.0 and lrs["decoders"] == 1.0
    assert not any(p.requires_grad for p in model.vision.parameters())  # the tower stays frozen
    no_decay = [g for g in groups if g["weight_decay"] == 0]
    assert no_decay and all(p.ndim < 2 for g in no_decay for p in g["params"])


def test_the_cnn_branch_is_its_own_group_and_trains_beside_a_frozen_tower():
    model = make_tiny(**{"vision.cnn_branch": [8, 16]})  # the tower frozen, as in the paper
    stage = StageSpec(name="s", steps=1, lr=1.0, lr_mult={"vision": 1, "branch": 0.5})
    lrs = {g["group"]: g["lr"] for g in param_groups(model, stage, weight_decay=0.0)}
    assert lrs["branch"] == 0.5 and "vision" not in lrs
    assert all(p.requires_grad for p in [*model.vision.cnn.parameters(), *model.vision.cnn_proj.parameters()])
    assert not any(p.requires_grad for p in model.vision.model.parameters())
    # a stage that does not name it gives the branch the tower's multiplier
    trained = make_tiny(**{"vision.cnn_branch": [8, 16], "vision.freeze": False})
    stage = StageSpec(name="s", steps=1, lr=1.0, lr_mult={"vision": 0.1})
    lrs = {g["group"]: g["lr"] for g in param_groups(trained, stage, weight_decay=0.0)}
    assert lrs["branch"] == lrs["vision"] == pytest.approx(0.1)
    groups = param_groups(trained, StageSpec(name="stage1", steps=1, lr=1.0), weight_decay=0.0)
    assert not {"vision", "branch"} & {g["group"] for g in groups}


def test_make_train_tiny_chains_its_stages():
    """The Makefile's `train-tiny` recipe: every config it runs loads, and each one after the first
    starts from the model the one before it writes (its ``model.init`` is that run's final folder)."""
    root = Path(__file__).parents[1]
    lines = (root / "Makefile").read_text().split("\ntrain-tiny:")[1].split("\n\n")[0].splitlines()
    configs = [line.split("--config ")[1].strip() for line in lines if "train --config " in line]
    assert configs[0] == "configs/tiny.yaml" and len(configs) > 1
    previous = None
    for name in configs:
        cfg = load_train_config(root / name)
        assert cfg.model.init == (None if previous is None else f"{previous.out_dir}/final"), name
        previous = cfg
    # the README copies the last stage's model into the package
    assert (
        f"cp -r {previous.out_dir}/final/. src/visionllm2/weights/visionllm2-tiny/"
        in (root / "README.md").read_text()
    )


def test_default_recipe_builds_and_trains_every_decoder():
    """configs/tiny.yaml: the model it names builds, and one mixed batch of world tasks gives a
    finite loss from every decoder, with gradients reaching each of them."""
    import numpy as np

    from visionllm2.data.synthetic.tasks import TaskNotApplicable, build_task
    from visionllm2.data.synthetic.world import generate_scene
    from visionllm2.modeling.builder import build_model
    from visionllm2.training.config import load_model_config

    cfg = load_train_config(Path(__file__).parents[1] / "configs" / "tiny.yaml")
    torch.manual_seed(0)
    model = build_model(load_model_config(cfg.model)).train()
    rng = np.random.default_rng(0)
    samples = []
    for task in ("det", "inst_seg", "pose", "gen", "edit", "vqa"):
        while True:  # pose needs a scene with a figure; some questions need a word, etc.
            try:
                s = build_task(task, generate_scene(rng), rng)
            except TaskNotApplicable:
                continue
            if task != "pose" or len(s.targets[0].boxes):
                break
        samples.append(s)
    out = model(model.processor(samples))
    decoders = {k.split(".")[0] for k in out.losses}
    assert decoders == {"grounding", "pose", "gen", "edit"}
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, dec in model.decoders.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters()), name


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_recipe_loads_and_its_datasets_build(recipe):
    """A typo in a recipe's dataset arguments or stage weights fails here, not on a rented GPU."""
    from visionllm2.training.data import build_dataset

    cfg = load_train_config(recipe)
    for spec in cfg.data:
        ds = build_dataset(spec)
        assert ds[0].conversation  # the first item builds
    for stage in cfg.stages:
        assert any(stage.weights.get(d.name, d.weight) > 0 for d in cfg.data), stage.name


def test_decoder_gradients_clipped_apart(tmp_path):
    """decoder_grad_clip: each decoder's gradient is clipped to its own norm, whatever the LLM's
    gradient; unset, one norm over everything couples them. The trainer logs each norm."""

    def clipped_decoder_norm(decoder_grad_clip: float | None, llm_scale: float) -> float:
        model = make_tiny()
        groups = param_groups(model, StageSpec(name="stage3", steps=1, lr=1.0), weight_decay=0.0)
        params = [p for g in groups for p in g["params"]]
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.grad = torch.ones_like(p) * (llm_scale if name.startswith("llm.") else 1.0)
        sets = clip_sets(model, params, 1.0, decoder_grad_clip)
        norms = clip_gradients(sets)
        assert set(norms) == (
            {"grad_norm"} if decoder_grad_clip is None else {"grad_norm", "grad_norm/probe"}
        )
        assert sorted(id(p) for _, ps, _ in sets for p in ps) == sorted(id(p) for p in params)
        rest = [
            p.grad for n, p in model.named_parameters() if p.requires_grad and not n.startswith("decoders.")
        ]
        assert float(torch.sqrt(sum((g**2).sum() for g in rest))) <= 1.0 + 1e-5
        return float(
            torch.sqrt(sum((p.grad**2).sum() for p in model.decoders.parameters() if p.grad is not None))
        )

    assert clipped_decoder_norm(0.1, 1.0) == pytest.approx(0.1, rel=1e-4)
    assert clipped_decoder_norm(0.1, 100.0) == pytest.approx(0.1, rel=1e-4)
    assert clipped_decoder_norm(None, 100.0) < 0.1 * clipped_decoder_norm(None, 1.0)
    model = make_tiny()
    with pytest.raises(ValueError, match="not the model's own"):
        clip_sets(model, [*model.parameters(), torch.nn.Parameter(torch.zeros(1))], 1.0, 0.1)
    run = run_script(tmp_path / "run", "decoder_grad_clip=0.1", "stages.0.steps=1", "stages.1.steps=2")
    assert run.returncode == 0, run.stderr[-3000:]
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "grad_norm/probe" in hist[-1] and "grad_norm/probe" not in hist[0]  # stage 1 runs no decoder
    for bad, match in (
        (["decoder_grad_clip=0"], "> 0"),
        (["decoder_grad_clip=0.1", "strategy=deepspeed"], "DeepSpeed"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_train_config(HELPERS / "tiny_recipe.yaml", bad)


def test_cosine_schedule():
    f = cosine_with_warmup(StageSpec(name="s", steps=10, warmup_steps=2, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1)
    assert f(2) > f(5) > f(9)


def test_recipe_errors(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("stages: [{name: s, steps: 1, lr_mult: {brain: 1}}]\n")
    with pytest.raises(ConfigError, match="unknown lr_mult group"):
        load_train_config(p)
    p.write_text("stages: [{name: s, steps: 1}]\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_train_config(p)
    for change in ("reinit: [decoders.grounding.backbone]", "copy: {decoders.pose: decoders.grounding}"):
        p.write_text(f"model: {{{change}}}\nstages: [{{name: s, steps: 1}}]\n")
        with pytest.raises(ConfigError, match="model.init is unset"):
            load_train_config(p)
    cfg = load_train_config(
        HELPERS / "tiny_recipe.yaml", ["stages.0.steps=7", "model.overrides.llm.num_layers=1"]
    )
    assert cfg.stages[0].steps == 7 and cfg.model.overrides["llm.num_layers"] == 1


@pytest.mark.slow
def test_train_resume_after_kill_matches_uninterrupted(tmp_path):
    full = run_script(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    hist = json.loads((tmp_path / "full" / "history.json").read_text())
    assert [h["step"] for h in hist] == list(range(1, 9))
    assert hist[-1]["lm_loss"] < hist[0]["lm_loss"]  # it learns
    assert {"task/det/lm_loss", "task/vqa/lm_loss", "probe.l1"} <= set().union(*hist)
    run = tmp_path / "full"
    assert (run / "train.log").is_file() and any((run / "tensorboard").iterdir())
    assert {"det.png", "vqa.png", "losses.png"} <= {p.name for p in (run / "curves").iterdir()}
    assert (run / "config.yaml").is_file()

    killed = run_script(tmp_path / "cut", "--kill-at", "1:2")
    assert killed.returncode != 0  # SIGKILL mid-way through the second stage (step 6 of 8)
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert "final" not in {p.name for p in (tmp_path / "cut").iterdir()}
    assert not any(name.startswith(".tmp") for name in ckpts)
    resumed = run_script(tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    hb = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [h["step"] for h in hb] == list(range(1, 9))
    assert hb[-1]["loss"] == pytest.approx(hist[-1]["loss"], rel=1e-6)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    args = ["stages.0.steps=2", "stages.1.steps=2"]
    single = run_script(tmp_path / "one", *args, "grad_accum=2")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_script(tmp_path / "two", *args, torchrun=2)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    changed = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    init = run_script(
        tmp_path / "zero", "stages.0.steps=1", "stages.0.lr=0.0", "stages.1.steps=1", "stages.1.lr=0.0"
    )
    assert init.returncode == 0
    z = weights(tmp_path / "zero")
    changed = sum(not torch.equal(z[k], a[k]) for k in a)
    assert changed > 10  # the compared runs really trained


def test_stage1_trains_text_only():
    """Stage 1 (the MLLM stage) runs no decoder: no decoder loss, and no decoder gradient
    reaches the LLM through the link states; other stages run them unless told otherwise."""
    sys.path.insert(0, str(HELPERS))
    from train_script import toy_samples

    assert not StageSpec(name="stage1", steps=1).runs_decoders
    assert StageSpec(name="stage2", steps=1).runs_decoders
    assert StageSpec(name="stage1", steps=1, decoders=True).runs_decoders
    assert not StageSpec(name="stage3", steps=1, decoders=False).runs_decoders
    model = make_tiny()
    batch = model.processor(toy_samples(4))
    with_dec = model(batch)
    assert "probe.l1" in with_dec.losses
    text_only = model(batch, decoders=False)
    assert text_only.losses == {}
    assert float(text_only.loss) == pytest.approx(float(text_only.lm_loss) * model.config.lm_loss_weight)


def test_micro_batches_by_length(tmp_path):
    """micro_batch_tokens: a step's samples are split into groups of similar length, each within
    the token budget (a longer sample alone); the run trains; bad combinations are refused."""
    sys.path.insert(0, str(HELPERS))
    from train_script import toy_samples

    from visionllm2.training.data import Mixture, StepBatches

    model = make_tiny()
    samples = toy_samples(12)
    long_answer = " and ".join(["a red square"] * 12)
    samples[0].conversation[-1].content = long_answer  # one sample far longer than the rest
    mix = Mixture({"toy": samples}, {"toy": 1.0}, seed=0, stage=0)
    lengths = {id(s): model.processor([s]).input_ids.shape[1] for s in samples}
    for budget, groups_expected in ((10_000, 1), (None, 1)):
        sb = StepBatches(mix, model.processor, batch_size=8, steps=1, max_tokens=budget)
        assert len(sb[0]) == groups_expected
    sb = StepBatches(mix, model.processor, batch_size=8, steps=3, max_tokens=4 * min(lengths.values()) + 4)
    for step in range(3):
        draws = [samples[i] for _, i in mix.draw(step, 8)]
        groups = sb._by_length(draws)
        assert sorted(id(s) for g in groups for s in g) == sorted(id(s) for s in draws)
        for g in groups:
            longest = max(lengths[id(s)] for s in g)
            assert len(g) == 1 or len(g) * longest <= sb.max_tokens
        assert [b.input_ids.shape[0] for b in sb[step]] == [len(g) for g in groups]
    run = run_script(tmp_path / "run", "micro_batch_tokens=120", "stages.0.steps=2", "stages.1.steps=2")
    assert run.returncode == 0, run.stderr[-3000:]
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist) == 4 and all(h["loss"] == h["loss"] for h in hist)  # finite, not NaN
    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        load_train_config(HELPERS / "tiny_recipe.yaml", ["micro_batch_tokens=100", "grad_accum=2"])


def test_each_run_logs_to_its_own_file(tmp_path):
    """Two runs in one process (as benchmarks/specialists.py does): the second run's lines go
    to its own train.log only, and no finished run's file stays attached to the logger."""
    sys.path.insert(0, str(HELPERS))
    import train_script  # noqa: F401  (registers the "toy" dataset)

    from visionllm2.training.engine import Trainer, log

    handlers = list(log.handlers)
    logs = []
    for name in ("first", "second"):
        cfg = load_train_config(HELPERS / "tiny_recipe.yaml", [f"out_dir={tmp_path / name}"])
        Trainer(cfg, progress=False).run()
        logs.append((tmp_path / name / "train.log").read_text().splitlines())
        assert log.handlers == handlers
    first_now = (tmp_path / "first" / "train.log").read_text().splitlines()
    steps = sum(s.steps for s in cfg.stages)
    assert len(first_now) == len(logs[0]) == len(logs[1]) == steps
    assert all(" step " in line for line in first_now)


def test_keep_links_holds_the_link_states(tmp_path, monkeypatch):
    """A stage that trains the LLM alone with ``keep_links`` learns its text answers while the
    link states (the decoders' inputs) stay near those of the model it began with; a run that
    crashes and resumes holds them to the same starting model and ends where an uninterrupted
    run ends."""
    sys.path.insert(0, str(HELPERS))
    from train_script import toy_samples

    from visionllm2.modeling.builder import from_pretrained
    from visionllm2.training import engine as engine_mod

    recipe = tmp_path / "lm.yaml"

    def train(name: str, keep: float, resume: bool = False) -> Path:
        text = (HELPERS / "tiny_recipe.yaml").read_text().split("stages:")[0]
        recipe.write_text(
            text + "stages:\n  - {name: lm, steps: 8, lr: 0.003, decoders: false, keep_links: "
            f"{keep}, lr_mult: {{projector: 0, llm: 1, links: 0, region: 0, backbone: 0, decoders: 0}}}}\n"
            "batch_size: 4\nlog_every: 1\nckpt_every: 2\nseed: 0\ndevice: cpu\n"
        )
        cfg = load_train_config(recipe, [f"out_dir={tmp_path / name}"])
        engine_mod.Trainer(cfg, resume=resume, progress=False).run()
        return tmp_path / name

    batch = None

    def drift(run: Path, start: Path) -> float:
        nonlocal batch
        start_model, end_model = from_pretrained(start), from_pretrained(run / "final")
        batch = batch or start_model.processor([s for s in toy_samples(12) if s.task == "det"])
        with torch.no_grad():
            states = end_model(batch, decoders=False, link_states=True).link_states
            return float(engine_mod.link_drift(start_model, batch, states))

    held = train("held", 100.0)
    start = held / "link_anchor" / "0-lm"
    free = train("free", 0.0)
    assert not (free / "link_anchor").exists()
    d_held, d_free = drift(held, start), drift(free, start)
    assert d_free > 0.01 and d_held < 0.2 * d_free, (d_held, d_free)
    hist = json.loads((held / "history.json").read_text())
    assert "keep_links" in hist[-1] and hist[-1]["lm_loss"] < hist[0]["lm_loss"]  # it still learns

    real_save = engine_mod.save_checkpoint

    def save_then_crash(run_dir, model, opt, sched, position, keep=2):
        path = real_save(run_dir, model, opt, sched, position, keep=keep)
        if position.step == 4:
            raise RuntimeError("crash")
        return path

    monkeypatch.setattr(engine_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(RuntimeError, match="crash"):
        train("cut", 100.0)
    monkeypatch.setattr(engine_mod, "save_checkpoint", real_save)
    train("cut", 100.0, resume=True)
    a, b = weights(held), weights(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ConfigError, match="keep_links"):
        load_train_config(recipe, ["strategy=fsdp"])
    with pytest.raises(ConfigError, match=">= 0"):
        load_train_config(recipe, ["stages.0.keep_links=-1"])


def det_only_recipe_head() -> str:
    """The toy recipe's model and data, drawn from its det samples only, so every sample has a link
    and every step measures the link drift (the recipe text before ``stages:``)."""
    sys.path.insert(0, str(HELPERS))
    from train_script import toy_samples

    from visionllm2.training.data import register_dataset

    register_dataset("toy_det", lambda n: [s for s in toy_samples(2 * n) if s.task == "det"])
    text = (HELPERS / "tiny_recipe.yaml").read_text().split("stages:")[0]
    return text.replace("type: toy,", "type: toy_det,")


def test_keep_links_holds_every_stage_to_the_first_stages_model(tmp_path):
    """Two keep_links stages share one anchor, the model the first began with: the second
    stage's first step (before any update of its own) already measures the first stage's
    drift, where an anchor of its own would read exactly 0."""
    from visionllm2.training.engine import Trainer

    recipe = tmp_path / "two.yaml"
    text = det_only_recipe_head()
    stage = (
        "steps: 3, lr: 0.003, decoders: false, keep_links: 1.0, "
        "lr_mult: {projector: 0, llm: 1, links: 0, region: 0, backbone: 0, decoders: 0}"
    )
    recipe.write_text(
        text + f"stages:\n  - {{name: a, {stage}}}\n  - {{name: b, {stage}}}\n"
        "batch_size: 4\nlog_every: 1\nckpt_every: 100\nseed: 0\ndevice: cpu\n"
    )
    out = tmp_path / "run"
    Trainer(load_train_config(recipe, [f"out_dir={out}"]), progress=False).run()
    assert sorted(p.name for p in (out / "link_anchor").iterdir()) == ["0-a"]
    hist = json.loads((out / "history.json").read_text())
    first_of_b = next(h for h in hist if h["stage"] == "b")
    assert hist[0]["keep_links"] == 0.0 and first_of_b["keep_links"] > 1e-6, hist


def test_keep_links_families_holds_only_the_named_families(tmp_path, caplog):
    """``keep_links_families`` holds the links of the families it names and leaves the others
    free: on det-only data, holding ``det`` keeps the det links near the start, holding only
    ``grd`` measures no drift at all (the batches have no grd links), lets them move as far as
    an unheld run and warns that it holds nothing; a family the model lacks fails before any
    training."""
    from visionllm2.modeling.builder import from_pretrained
    from visionllm2.training import engine as engine_mod

    recipe = tmp_path / "fam.yaml"
    text = det_only_recipe_head()
    from train_script import toy_samples

    def train(name: str, families: str) -> Path:
        recipe.write_text(
            text + "stages:\n  - {name: lm, steps: 8, lr: 0.003, decoders: false, keep_links: 100.0, "
            f"keep_links_families: {families}, "
            "lr_mult: {projector: 0, llm: 1, links: 0, region: 0, backbone: 0, decoders: 0}}\n"
            "batch_size: 4\nlog_every: 1\nckpt_every: 100\nseed: 0\ndevice: cpu\n"
        )
        engine_mod.Trainer(load_train_config(recipe, [f"out_dir={tmp_path / name}"]), progress=False).run()
        return tmp_path / name

    with caplog.at_level(logging.WARNING, logger="visionllm2.train"):
        held = train("held", "[det]")
        assert not [r for r in caplog.records if "holds nothing" in r.getMessage()]
        free = train("free", "[grd]")
    warned = [r.getMessage() for r in caplog.records if "holds nothing" in r.getMessage()]
    assert len(warned) == 1 and "['grd']" in warned[0] and "first 1 steps" in warned[0], warned
    start = from_pretrained(held / "link_anchor" / "0-lm")
    batch = start.processor([s for s in toy_samples(12) if s.task == "det"])

    def drift(run: Path) -> float:
        with torch.no_grad():
            states = from_pretrained(run / "final")(batch, decoders=False, link_states=True).link_states
            return float(engine_mod.link_drift(start, batch, states))

    d_held, d_free = drift(held), drift(free)
    assert d_free > 0.01 and d_held < 0.2 * d_free, (d_held, d_free)
    assert all(h["keep_links"] == 0.0 for h in json.loads((free / "history.json").read_text()))
    with pytest.raises(ConfigError, match=r"keep_links_families names \['dett'\]"):
        train("typo", "[dett]")
    assert not (tmp_path / "typo" / "link_anchor").exists()
    with pytest.raises(ConfigError, match="keep_links_families"):
        load_train_config(recipe, ["stages.0.keep_links=0"])


def test_keep_links_to_init_holds_the_links_to_the_saved_model_not_its_fresh_parts(tmp_path):
    """A run that starts parts of a saved model fresh (here its projector) changes the link
    states before any update (another seed than the saved model's, so that the fresh projector
    differs from the saved one); ``keep_links_to: init`` holds them to the saved model's, whose
    states its decoders were trained on: the anchor keeps the saved projector and the first
    step already measures the fresh one's drift (the default anchor, the reinitialised model,
    reads exactly 0 there); ``keep_links_to: <folder>`` holds them to that model's, from a run
    that starts from another. Without model.init ``init`` is a config error, and a folder that
    holds no model fails before the first step."""
    from safetensors.torch import load_file

    from visionllm2.training.engine import Trainer

    head = det_only_recipe_head()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        head + "stages:\n  - {name: a, steps: 1, lr: 0.0, decoders: false}\n"
        "batch_size: 4\nlog_every: 1\nckpt_every: 100\nseed: 0\ndevice: cpu\n"
    )
    Trainer(load_train_config(recipe, [f"out_dir={tmp_path / 'base'}"]), progress=False).run()
    base = tmp_path / "base" / "final"
    recipe.write_text(
        head.split("model:")[0]
        + "data:"
        + head.split("data:", 1)[1]
        + "stages:\n  - {name: lm, steps: 1, lr: 0.0, decoders: false, keep_links: 1.0}\n"
        "batch_size: 4\nlog_every: 1\nckpt_every: 100\nseed: 1\ndevice: cpu\n"
    )
    first_step = {}
    for name, init, to in (
        ("first_stage", base, "first_stage"),
        ("init", base, "init"),
        # a model's folder: here the fresh-projector model that the first run saved, from which
        # this run starts with another fresh projector, holding to the saved model all the same
        ("folder", tmp_path / "first_stage" / "final", base),
    ):
        out = tmp_path / name
        overrides = [f"out_dir={out}", f"model.init={init}", "model.reinit=[projector]"]
        overrides.append(f"keep_links_to={to}")
        Trainer(load_train_config(recipe, overrides), progress=False).run()
        first_step[name] = json.loads((out / "history.json").read_text())[0]["keep_links"]
        anchor = load_file(str(out / "link_anchor" / "0-lm" / "model.safetensors"))
        saved = load_file(str(base / "model.safetensors"))
        same = all(torch.equal(anchor[k], saved[k]) for k in saved if k.startswith("projector."))
        assert same == (name != "first_stage"), name
    assert first_step["first_stage"] == 0.0 and first_step["init"] > 1e-4, first_step
    assert first_step["folder"] > 1e-4, first_step
    with pytest.raises(ConfigError, match="keep_links_to: init"):
        load_train_config(recipe, [f"out_dir={tmp_path / 'x'}", "keep_links_to=init"])
    with pytest.raises(ConfigError, match="keep_links_to must be"):
        load_train_config(recipe, [f"out_dir={tmp_path / 'x'}", "keep_links_to=''"])
    missing = [f"out_dir={tmp_path / 'y'}", f"model.init={base}", f"keep_links_to={tmp_path / 'nowhere'}"]
    with pytest.raises(ConfigError, match="keep_links_to: .*nowhere is not a visionllm2 model folder"):
        Trainer(load_train_config(recipe, missing), progress=False).run()
    assert not (tmp_path / "y" / "link_anchor").exists()
