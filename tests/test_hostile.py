"""Bad inputs and faults, each with its exact outcome: refused with a one-line message, fallen back,
rebuilt, or resumed bit-identically; a crafted pickle payload never runs.

One tiny pretrain run (8 steps, checkpoints at 4 and 8; the fixtures of tests/recipes) is damaged
copy by copy; trainer faults use the in-memory trainer of tests/recipes/test_trainer_guards.py."""
import errno
import importlib.util
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqmodels.config import ModelConfig
from seqmodels.data.corpus import load_corpus
from seqmodels.data.text import PackedTextData, TextDataSettings
from seqmodels.kernels.gla import gla, gla_recurrent, gla_step
from seqmodels.run_config import error_line, parse_run_args, run_cli
from seqmodels.train import run_lock
from seqmodels.train.checkpoint import intact_tag, read_latest
from seqmodels.train.deepspeed_config import resolve_deepspeed_config
from seqmodels.train.distributed import init_distributed
from seqmodels.train.export import load_for_inference
from seqmodels.train.manifest import MANIFEST, check_compatible, write_manifest
from seqmodels.train.monitor import read_metrics
from seqmodels.train.safe_load import UnsafeCheckpointError
from seqmodels.train.trainer import NonFiniteLossError, TrainSettings

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipes_conftest = _module(TESTS / "recipes" / "conftest.py", "hostile_recipes_conftest")
guards = _module(TESTS / "recipes" / "test_trainer_guards.py", "hostile_trainer_guards")
generate_recipe = _module(REPO / "recipes" / "generate.py", "hostile_generate_recipe")
evaluate_recipe = _module(REPO / "recipes" / "evaluate.py", "hostile_evaluate_recipe")


# --------------------------------------------------------------------------- one tiny run to damage
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return recipes_conftest.write_corpus(tmp_path_factory.mktemp("corpus"), documents=20)


@pytest.fixture(scope="module")
def args(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return lambda out, **kw: recipes_conftest.tiny_run_args(corpus, cache, out, **kw)


@pytest.fixture(scope="module")
def run8(args, tmp_path_factory):
    out = tmp_path_factory.mktemp("run8")
    recipes_conftest.run_pretrain(args(out, name="r", steps=8))
    return out / "r"


def losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def copy_run(run8, tmp_path) -> Path:
    target = tmp_path / "r"
    shutil.copytree(run8, target)
    return target


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {  # how the latest checkpoint (global_step8) is broken -> what the warning names
    "one flipped byte": (lambda d: flip_byte(d / "global_step8" / "mp_rank_00_model_states.pt"),
                         "does not match its sha256"),
    "truncated": (lambda d: os.truncate(d / "global_step8" / "mp_rank_00_model_states.pt", 100), "truncated"),
    "emptied": (lambda d: os.truncate(d / "global_step8" / "rank00000_train_state.pt", 0), "has 0 bytes"),
    "file missing": (lambda d: (d / "global_step8" / "model_config.yaml").unlink(), "model_config.yaml is missing"),
    "no manifest": (lambda d: (d / "global_step8" / MANIFEST).unlink(), "manifest.json is missing"),
    "latest missing": (lambda d: (d / "latest").unlink(), None),
    "latest garbage": (lambda d: (d / "latest").write_bytes(b"\x00\xff"), "does not name a checkpoint"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_loudly(run8, tmp_path, capsys, case):
    run_dir = copy_run(run8, tmp_path)
    ckpt = run_dir / "checkpoints"
    damage, named = DAMAGE[case]
    damage(ckpt)
    latest_only = case.startswith("latest")  # global_step8 itself is intact there
    expected = "global_step8" if latest_only else "global_step4"
    assert intact_tag(ckpt, set_aside=True) == expected
    warning = capsys.readouterr().err
    assert "[checkpoint] WARNING" in warning and f"resuming from {ckpt / expected}" in warning
    assert (named or "latest is missing") in warning
    assert read_latest(ckpt) == expected
    assert (ckpt / "damaged-global_step8").is_dir() != latest_only
    model, _ = load_for_inference(ckpt)  # inference picks the same intact checkpoint
    assert model is not None


def test_resume_from_the_fallback_is_bit_identical(run8, args, tmp_path, capsys):
    """global_step8 damaged: the run resumes at step 4 and steps 5-8 repeat the clean run exactly."""
    run_dir = copy_run(run8, tmp_path)
    flip_byte(run_dir / "checkpoints" / "global_step8" / "mp_rank_00_model_states.pt")
    result = recipes_conftest.run_pretrain(args(tmp_path, name="r", steps=8))
    assert result.resumed_from == "global_step4"
    assert "checkpoint global_step8 is damaged" in capsys.readouterr().err
    records = [r for r in read_metrics(run_dir) if "loss" in r]
    assert {r["step"]: r["loss"] for r in records[8:]} == {s: losses(run8)[s] for s in range(5, 9)}


def test_no_intact_checkpoint_is_refused(run8, tmp_path):
    ckpt = copy_run(run8, tmp_path) / "checkpoints"
    for tag in ("global_step4", "global_step8"):
        flip_byte(ckpt / tag / "mp_rank_00_model_states.pt")
    with pytest.raises(ValueError, match=r"no intact checkpoint in .*global_step8 is damaged.*global_step4 is "
                                         r"damaged.*Start a new run dir"):
        intact_tag(ckpt)


# --------------------------------------------------------------------------- pickle payloads
class Payload:
    """Unpickling this calls Path.write_text(marker): what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "the payload ran")


def plant_payload(tag_dir: Path, file_name: str, marker: Path) -> None:
    """Replace one file of the checkpoint by a payload and re-sign the manifest (a forger can)."""
    torch.save({"module": Payload(marker)}, tag_dir / file_name)
    manifest = json.loads((tag_dir / MANIFEST).read_text())
    write_manifest(tag_dir, manifest["world_size"], manifest["parameters"])


@pytest.mark.parametrize("where", ["generate", "evaluate", "resume", "resume: train state"])
def test_pickle_payload_never_runs(run8, args, tmp_path, where):
    run_dir = copy_run(run8, tmp_path)
    marker = tmp_path / "marker"
    file_name = "rank00000_train_state.pt" if where == "resume: train state" else "mp_rank_00_model_states.pt"
    plant_payload(run_dir / "checkpoints" / "global_step8", file_name, marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        if where == "generate":
            generate_recipe.main(["--model", str(run_dir / "checkpoints"), "--max_new_tokens", "1"])
        elif where == "evaluate":
            text = tmp_path / "notes.txt"
            text.write_text("the cat sees the state 3.\n")
            evaluate_recipe.main(["--model", str(run_dir / "checkpoints"), "--text", str(text)])
        else:
            recipes_conftest.run_pretrain(args(tmp_path, name="r", steps=9))
    assert not marker.exists()
    message = str(info.value)
    assert f"refusing to load {run_dir / 'checkpoints' / 'global_step8' / file_name}" in message
    assert "pathlib" in message and "--trust-checkpoint" in message and "\n" not in message


def test_hf_export_is_safetensors_only(run8, tmp_path):
    hf = copy_run(run8, tmp_path) / "hf"
    assert [p.name for p in hf.glob("*.safetensors")] == ["model.safetensors"] and not list(hf.glob("*.bin"))
    (hf / "model.safetensors").unlink()
    torch.save({}, hf / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds no .safetensors weights; only safetensors HF exports are loaded"):
        load_for_inference(hf)


# --------------------------------------------------------------------------- resume with another model / world
def test_resume_after_a_vocab_change_names_the_key_and_sizes(run8, args, tmp_path):
    copy_run(run8, tmp_path)
    with pytest.raises(ValueError, match=r"holds embed.weight with shape \[300, 32\], this model has \[320, 32\] "
                                         r"\(the model config or vocabulary changed\).*start a new run dir"):
        recipes_conftest.run_pretrain(args(tmp_path, name="r", steps=9, **{"model.vocab_size": 320}))


def test_resume_with_another_process_count_names_the_saved_one(run8, tmp_path):
    tag = copy_run(run8, tmp_path) / "checkpoints" / "global_step8"
    manifest = json.loads((tag / MANIFEST).read_text())
    manifest["world_size"] = 2
    (tag / MANIFEST).write_text(json.dumps(manifest))
    model = load_for_inference(tag)[0]
    with pytest.raises(ValueError, match=r"was saved by 2 process\(es\), this run has 1: resume with 2 process\(es\) "
                                         r"\(deepspeed --num_gpus 2\)"):
        check_compatible(tag, model, world_size=1)


# --------------------------------------------------------------------------- data cache
def test_changed_corpus_rebuilds_and_failed_builds_clean_up(corpus, tmp_path):
    info = init_distributed()
    corpus_copy = tmp_path / "corpus"
    shutil.copytree(corpus, corpus_copy)
    cache = tmp_path / "cache"
    settings = TextDataSettings(corpus=str(corpus_copy), vocab_size=300, seq_len=32, validation_fraction=0.1,
                                cache_dir=str(cache))
    first = PackedTextData(settings, info)
    assert PackedTextData(settings, info).path == first.path  # unchanged corpus: reused
    (corpus_copy / "doc000.txt").write_text("an edited document.\n" * 50)
    second = PackedTextData(settings, info)
    assert second.path != first.path and (second.path / "index.json").is_file()
    assert second.index["splits"] != first.index["splits"] or second.tokenizer_hash != first.tokenizer_hash
    too_long = TextDataSettings(**{**vars(settings), "seq_len": 10**7})
    with pytest.raises(ValueError, match="building the packed data .* failed on rank 0: ValueError: the train split"):
        PackedTextData(too_long, info)
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == []


def _build_after(barrier, settings: dict, out_dir: str) -> None:
    from seqmodels.data import text

    barrier.wait()
    text._build(TextDataSettings(**settings), Path(out_dir))


def test_two_processes_building_one_cache_at_once_leave_one_complete_directory(corpus, tmp_path, monkeypatch):
    """Two runs started together on the same data (two jobs, a grid) used to share one temporary
    directory: one removed the other's files and the cache was left with an index and no shards."""
    import multiprocessing

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    settings = TextDataSettings(corpus=str(corpus), vocab_size=300, seq_len=32, validation_fraction=0.1,
                                cache_dir=str(tmp_path / "cache"))
    out_dir = Path(settings.cache_dir) / f"packed-{settings.build_key()}"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    builders = [ctx.Process(target=_build_after, args=(barrier, vars(settings), str(out_dir))) for _ in range(2)]
    for process in builders:
        process.start()
    for process in builders:
        process.join(120)
    assert [process.exitcode for process in builders] == [0, 0]
    data = PackedTextData(settings, init_distributed())
    assert data.path == out_dir
    for split in data.index["splits"].values():
        for shard in split["shards"]:
            assert (out_dir / shard["file"]).stat().st_size == shard["num_tokens"] * 2
    assert next(iter(data.eval_batches(2)()))["input_ids"].shape == (2, 32)
    assert [p.name for p in out_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_binary_corpus_file_is_named(corpus, tmp_path):
    corpus_copy = tmp_path / "corpus"
    shutil.copytree(corpus, corpus_copy)
    (corpus_copy / "image.txt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=f"corpus file {corpus_copy / 'image.txt'} is not UTF-8 text"):
        load_corpus(corpus_copy)


# --------------------------------------------------------------------------- run lock
def write_lock(run_dir: Path, pid: int, host: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / run_lock.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "started": time.time()}))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_lock(tmp_path, capsys):
    live = tmp_path / "live"
    write_lock(live, os.getppid(), socket.gethostname())
    with pytest.raises(run_lock.RunLockedError, match=f"{live} is in use by pid {os.getppid()} on "
                                                      f"{socket.gethostname()} since .*another run name"):
        with run_lock.run_lock(live):
            pass
    remote = tmp_path / "remote"
    write_lock(remote, 1, "another-host")
    with pytest.raises(run_lock.RunLockedError, match=f"in use by pid 1 on another-host .*or delete "
                                                      f"{remote / run_lock.LOCK_FILE} if that run is gone"):
        with run_lock.run_lock(remote):
            pass
    stale = tmp_path / "stale"
    pid = dead_pid()
    write_lock(stale, pid, socket.gethostname())
    with run_lock.run_lock(stale):
        assert json.loads((stale / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
        with run_lock.run_lock(stale):  # re-entrant within the process
            pass
        assert (stale / run_lock.LOCK_FILE).exists()
    assert not (stale / run_lock.LOCK_FILE).exists()
    assert f"taking over the stale lock {stale / run_lock.LOCK_FILE} (pid {pid}" in capsys.readouterr().err


def test_second_writer_is_refused(run8, args, tmp_path):
    run_dir = copy_run(run8, tmp_path)
    write_lock(run_dir, os.getppid(), socket.gethostname())
    with pytest.raises(run_lock.RunLockedError, match=f"{run_dir} is in use by pid {os.getppid()}"):
        recipes_conftest.run_pretrain(args(tmp_path, name="r", steps=9))
    assert max(losses(run_dir)) == 8  # metrics.jsonl untouched


# --------------------------------------------------------------------------- configs and arguments
PRETRAIN_DEFAULTS = {"train": vars(TrainSettings()), "name": "run"}
CONFIG_CASES = {  # argv or YAML text -> exact outcome
    "typo in a key": (["--train.stpes", "3"], "unknown key 'train.stpes'; valid keys here"),
    "word for a number": (["--train.weight_decay", "heavy"],
                          "--train.weight_decay: train.weight_decay must be a finite number, got 'heavy'"),
    "infinite lr": (["--train.lr", ".inf"], "--train.lr: train.lr must be a finite number, got inf"),
    "fractional steps": (["--train.steps", "2.5"], "train.steps must be an integer, got 2.5"),
    "bool as a number": ("train: {lr: true}\n", "train.lr must be a finite number, got True"),
    "malformed YAML": ("train:\n  lr: [1e-3\n  steps: 3\n", r"run.yaml:\d+: malformed YAML"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_values_are_refused_naming_the_key(tmp_path, case):
    given, message = CONFIG_CASES[case]
    if isinstance(given, str):
        (tmp_path / "run.yaml").write_text(given)
        given = ["--config", str(tmp_path / "run.yaml")]
    with pytest.raises(ValueError, match=message):
        TrainSettings.from_dict(parse_run_args(given, PRETRAIN_DEFAULTS)["train"])


def test_numeric_strings_are_converted(tmp_path):
    """YAML 1.1 reads `lr: 3e-3` as text; it is taken as the number it spells."""
    (tmp_path / "run.yaml").write_text("train: {lr: 3e-3, steps: '20'}\n")
    settings = TrainSettings.from_dict(parse_run_args(["--config", str(tmp_path / "run.yaml")],
                                                      PRETRAIN_DEFAULTS)["train"])
    assert settings.lr == 0.003 and settings.steps == 20 and isinstance(settings.steps, int)


DS_CASES = {
    "misspelled key": ('{"train_micro_batch_size_per_gpu": 2, "gradient_cliping": 1.0}',
                       re.escape("ds.json: DeepSpeed does not know the key 'gradient_cliping' (it would be ignored); "
                                 "did you mean 'gradient_clipping'?")),
    "malformed JSON": ('{"train_micro_batch_size_per_gpu": 2,\n "gradient_clipping": 1.0,,\n}',
                       r"ds.json:2: malformed JSON \(Expecting property name"),
    "nested typo": ('{"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stag": 1}}',
                    "DeepSpeed refuses the config: .*stag Extra inputs are not permitted"),
}


@pytest.mark.parametrize("case", sorted(DS_CASES))
def test_deepspeed_json_is_checked(tmp_path, case):
    text, message = DS_CASES[case]
    (tmp_path / "ds.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        resolve_deepspeed_config(str(tmp_path / "ds.json"), {})


def test_shipped_deepspeed_configs_pass():
    for path in sorted((REPO / "recipes" / "configs").glob("*.json")):
        assert resolve_deepspeed_config(path.name, {}) == json.loads(path.read_text())


@pytest.mark.parametrize("prompt", ["def f(x): return x", "3.14", "yes", "null", "print(x)  # show", "--x"])
def test_generate_prompt_arrives_verbatim(run8, monkeypatch, prompt):
    seen = []

    def fake_generate(model, tokenizer, text, *rest):
        seen.append(text)
        return {"text": text, "prompt_tokens": 1, "prefill_s": 0.0, "new_tokens": 0, "decode_tokens_per_s": 0.0,
                "state_bytes_prompt": 0, "state_bytes_end": 0}

    monkeypatch.setattr(generate_recipe, "generate_text", fake_generate)
    generate_recipe.main(["--model", str(run8 / "hf"), "--prompt", prompt])
    generate_recipe.main(["--model", str(run8 / "hf"), f"--prompt={prompt}"])
    assert seen == [prompt, prompt]


ALREADY_CLEAR = {  # errors that were one clear line before this module existed
    "unknown mixer": (lambda: ModelConfig.from_dict({"mixer": "glaa", "vocab_size": 10}),
                      "unknown mixer 'glaa'; registered mixers"),
    "unknown preset": (lambda: ModelConfig.from_preset("transformer-tinyy"),
                       "unknown preset 'transformer-tinyy'; available presets"),
    "kernel shape": (lambda: gla(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8), torch.zeros(1, 5, 2, 8)),
                     r"v has shape \(1, 5, 2, 8\); expected \[B, T, H, Dv\] where T=4"),
    "unknown train setting": (lambda: TrainSettings.from_dict({"stepz": 3}), r"unknown train setting\(s\) \['stepz'\]"),
}


@pytest.mark.parametrize("case", sorted(ALREADY_CLEAR))
def test_clear_errors_stay_clear(case):
    call, message = ALREADY_CLEAR[case]
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert error_line(info.value) == str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- the recipes' entry point
def test_entry_point_prints_one_line_unless_debug(monkeypatch, capsys, tmp_path):
    def disk_full():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))

    monkeypatch.setattr(sys, "argv", ["recipe.py"])
    with pytest.raises(SystemExit) as info:
        run_cli(disk_full, "pretrain")
    assert info.value.code == 1
    assert capsys.readouterr().err == (f"[pretrain] error: disk full writing {tmp_path / 'metrics.jsonl'}: free space "
                                       "(or write to another disk), then rerun (resume picks up) (--debug shows the "
                                       "traceback)\n")
    monkeypatch.setattr(sys, "argv", ["recipe.py", "--debug"])
    with pytest.raises(OSError):
        run_cli(disk_full, "pretrain")


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("basic_ios::clear: iostream error")])
def test_disk_full_while_saving_names_the_checkpoint(tmp_path, monkeypatch, failure):
    trainer = guards.make_trainer(tmp_path, steps=1, save_every=0)
    trainer.fit()
    trainer.engine.global_steps = 2

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ValueError, match=r"(disk full writing|writing checkpoint) .*\.tmp-global_step2.*free space"):
        trainer.save()
    assert read_latest(tmp_path / "checkpoints") == "global_step1"


# --------------------------------------------------------------------------- the NaN guard
def nan_grad_loss(poison):
    """A finite loss whose gradient is NaN on batch `poison` (d/dx sqrt(x) at 0, times 0)."""
    def loss_fn(engine, batch):
        loss = guards.lm_loss(engine, batch)
        if batch["index"] == poison:
            loss = loss + torch.sqrt(0.0 * next(engine.module.parameters()).sum())
        return loss
    return loss_fn


@pytest.mark.parametrize("stage", [0, 1])
def test_nan_gradient_norm_names_the_failing_step(tmp_path, monkeypatch, stage):
    monkeypatch.setitem(guards.DS_CONFIG, "zero_optimization", {"stage": stage})
    trainer = guards.make_trainer(tmp_path, save_every=2)
    for i, batch in enumerate(trainer.train_loader.batches):
        batch["index"] = i
    trainer.loss_fn = nan_grad_loss(poison=2)  # the third batch: step 3
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm \((nan|inf)\) at step 3 \(micro-batch 1 of 1\) "
                                                 rf"with lr \S+; stopped. Last good checkpoint: {tmp_path}\S*global_step2"):
        trainer.fit()


def test_diverged_weights_stop_naming_the_step_tensor_lr_and_checkpoint(tmp_path):
    """A GLA model whose weights went NaN in the update of step 3: the forward of step 4 fails in the
    kernel's input check; the stop names step 3, the parameter, the kernel's complaint and the lr,
    and no batch is skipped (skipping cannot repair weights)."""
    from seqmodels import SeqLM
    from seqmodels.train.trainer import Trainer

    torch.manual_seed(0)
    model = SeqLM(ModelConfig.from_preset("gla-tiny", vocab_size=50, d_model=32, n_heads=2))
    ids = torch.randint(0, 50, (6, 2, 9), generator=torch.Generator().manual_seed(0))
    loader = guards.ListLoader([{"input_ids": x[:, :-1], "labels": x[:, 1:]} for x in ids])
    settings = TrainSettings(steps=6, lr=1e-3, warmup_steps=1, save_every=2, progress=False, nan_skip_batches=3)
    trainer = Trainer(model, dict(guards.DS_CONFIG), settings, init_distributed(), tmp_path, loader)

    def poison_after_step_3(trainer, step, loss):
        if step == 3:
            with torch.no_grad():
                for param in trainer.engine.module.parameters():
                    param.fill_(float("nan"))

    trainer.callbacks.append(poison_after_step_3)
    with pytest.raises(NonFiniteLossError) as stop:
        trainer.fit()
    message = str(stop.value)
    assert message.startswith("non-finite weights after the update of step 3 (")
    assert "the forward of step 4 failed: log_decay_k contains NaN) at step 3 (micro-batch 1 of 1) with lr " in message
    assert f"Last good checkpoint: {tmp_path / 'checkpoints' / 'global_step2'}" in message
    assert "skipping batches cannot help" in message and trainer.skipped_batches == 0


# --------------------------------------------------------------------------- gate exactly 0
def gate_inputs(dtype, per_channel=True, T=10, reset=4):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, T, 2, 4, generator=gen, dtype=dtype) for _ in range(3))
    shape = (2, T, 2, 4) if per_channel else (2, T, 2)
    log_decay = torch.nn.functional.logsigmoid(torch.randn(*shape, generator=gen, dtype=dtype))
    log_decay[:, reset] = float("-inf")
    return q, k, v, log_decay


BACKENDS = {
    "naive": lambda q, k, v, g: gla(q, k, v, g, backend="naive")[0],
    "torch": lambda q, k, v, g: gla(q, k, v, g, backend="torch", chunk_size=4)[0],
    "triton": lambda q, k, v, g: gla(q, k, v, g, backend="triton", chunk_size=16)[0],
    "recurrent": lambda q, k, v, g: gla_recurrent(q, k, v, g)[0],
    "step": lambda q, k, v, g: torch.stack([out for out in _steps(q, k, v, g)], dim=1),
}


def _steps(q, k, v, g):
    state = None
    for t in range(q.shape[1]):
        out, state = gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state=state)
        yield out


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_gate_zero_resets_the_state_with_finite_gradients(backend, per_channel):
    """Gate 0 at t=4 forgets everything before: outputs from t=4 on equal a fresh scan from t=4
    (float64, 1e-12); outputs and gradients are finite."""
    q, k, v, g = (x.requires_grad_() for x in gate_inputs(torch.float64, per_channel))
    out = BACKENDS[backend](q, k, v, g)
    fresh = gla(q[:, 4:], k[:, 4:], v[:, 4:], g[:, 4:], backend="naive")[0]
    torch.testing.assert_close(out[:, 4:], fresh, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    for name, tensor in zip("qkvg", (q, k, v, g)):
        assert torch.isfinite(tensor.grad).all(), name
    assert torch.isfinite(out).all()


def test_gate_zero_float32_matches_float64():
    """float32 on every backend, the Triton kernel included (compiled on CUDA, the interpreter on CPU,
    given the gates as gla() hands them over), against the float64 result."""
    from seqmodels.kernels.gla.gates import finite_log_decay
    from seqmodels.kernels.gla.triton_chunk import gla_triton

    q, k, v, g = gate_inputs(torch.float64, T=20, reset=9)
    expected = gla(q, k, v, g, backend="naive")[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, g = (x.float().to(device) for x in (q, k, v, g))
    outputs = {backend: BACKENDS[backend](q, k, v, g) for backend in ("naive", "torch", "recurrent")}
    outputs["triton kernel"] = gla_triton(q, k, v, finite_log_decay(g), 4 ** -0.5, None, False, False, 16)[0]
    for backend, out in outputs.items():
        assert torch.isfinite(out).all(), backend
        torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-4, atol=1e-5, msg=backend)


def test_safe_load_refuses_a_raw_pickle(tmp_path):
    """Not only zip checkpoints: a plain pickle file is refused the same way."""
    import pickle

    from seqmodels.train.safe_load import safe_torch_load

    marker = tmp_path / "marker"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"x": Payload(marker)}))
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {path}"):
        safe_torch_load(path)
    assert not marker.exists()
