"""seqmodels.linearize (behind recipes/linearize.py) on a tiny random LlamaForCausalLM
(save_pretrained in the test): stage 1 cuts every layer's transfer MSE >= 10x, stage 2 lowers KL(teacher ‖ student), the HF output
loads and decodes with a constant-size state, the report holds its numbers, the stage-2 losses (kl | ce | kl+ce)
equal their closed forms, a LoLCATs student takes the teacher's rotary, bad inputs are ValueErrors; slow:
`deepspeed --num_gpus 2` (ZeRO-2) gives one process's stage-1 and stage-2 loss curves."""
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import seqmodels  # noqa: F401  (registers the Auto classes)
from seqmodels.data.tokenizer import train_bpe
from seqmodels.linearize import (
    AttentionTransfer,
    apply_lora,
    assemble_student,
    build_student_mixers,
    check_tokenizer,
    decode_state_bytes,
    freeze_all_but_new,
    kl_teacher_student,
    linear_branch_disabled,
    load_teacher,
    merge_lora,
    new_parameter_names,
)
from seqmodels.linearize import Distiller, pipeline
from seqmodels.train.monitor import read_metrics
from seqmodels.testing import check_generate_matches_forward, rel_err

VOCAB = 300
REPO = Path(__file__).resolve().parents[2]
SEQ_LEN, MICRO, STEPS1, STEPS2 = 32, 4, 30, 10


def corpus_texts(corpus_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]


def make_llama(out: Path, corpus_dir: Path, vocab_size: int = VOCAB, model_type: str = "llama",
               tokenizer: bool = True, **overrides) -> Path:
    """A tiny random Llama-family causal LM (+ a BPE tokenizer), save_pretrained into `out`.
    initializer_range 0.08 gives attention that is neither uniform nor one-hot."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    values = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, initializer_range=0.08)
    values.update(overrides)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values))
    model.save_pretrained(str(out))
    if tokenizer:
        train_bpe(corpus_texts(corpus_dir), VOCAB, out)
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, corpus_dir):
    return make_llama(tmp_path_factory.mktemp("teacher"), corpus_dir)


@pytest.fixture(scope="module")
def linearize():
    """What recipes/linearize.py runs: linearize(argv) -> the report (seqmodels.linearize.pipeline)."""
    return lambda argv: pipeline.run_linearize(pipeline.parse_args(argv)).report


def run_argv(teacher, corpus_dir, data_cache, out, **extra) -> list[str]:
    args = {
        "teacher": teacher, "name": "lin", "output_dir": out,
        "student.mixer": "lizard", "student.options.window": 4, "student.options.n_meta": 2,
        "data.corpus": corpus_dir, "data.seq_len": SEQ_LEN, "data.validation_fraction": 0.1,
        "data.cache_dir": data_cache, "ds.train_micro_batch_size_per_gpu": MICRO,
        "stage1.train.steps": STEPS1, "stage1.train.lr": 0.05, "stage1.train.warmup_steps": 2,
        "stage1.train.weight_decay": 0.0, "stage1.train.log_every": 1, "stage1.train.eval_batches": 2,
        "stage1.train.save_every": 15, "stage1.train.progress": False,
        "stage2.train.steps": STEPS2, "stage2.train.lr": 0.002, "stage2.train.warmup_steps": 2,
        "stage2.train.log_every": 1, "stage2.train.eval_batches": 2, "stage2.train.progress": False,
        "stage2.lora.rank": 4,
        "report.eval_batches": 2, "report.state_contexts": "[64, 256]",
        "report.mqar.seq_len": 32, "report.mqar.num_kv_pairs": 2, "report.mqar.num_examples": 8,
    }
    args.update(extra)
    return [item for key, value in args.items() if value is not None for item in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def lin_run(linearize, teacher_dir, corpus_dir, data_cache, tmp_path_factory):
    """One end-to-end run of the recipe (plain python, DeepSpeed ZeRO-0 on gloo): (run_dir, report, argv)."""
    out = tmp_path_factory.mktemp("lin-runs")
    argv = run_argv(teacher_dir, corpus_dir, data_cache, out)
    report = linearize(argv)
    return out / "lin", report, argv


# ---------------------------------------------------------------------------------------- end to end
def test_stage1_cuts_every_layers_transfer_mse_tenfold(lin_run):
    _, report, _ = lin_run
    before, after = report["stage1"]["layer_mse_before"], report["stage1"]["layer_mse_after"]
    print(f"stage 1 held-out MSE per layer: before {before}, after {after} ({STEPS1} steps)")
    assert len(before) == len(after) == 2
    for b, a in zip(before, after):
        assert a * 10 <= b, (before, after)


def test_stage2_lowers_kl(lin_run):
    _, report, _ = lin_run
    s2 = report["stage2"]
    print(f"stage 2 held-out KL: {s2['kl_before']:.5f} -> {s2['kl_after']:.5f} ({STEPS2} steps)")
    assert s2["kl_after"] < s2["kl_before"]


def test_report_numbers(lin_run):
    run_dir, report, _ = lin_run
    assert json.loads((run_dir / "report.json").read_text()) == report
    assert "held-out perplexity" in (run_dir / "report.md").read_text()
    assert report["stage1"]["tokens"] == STEPS1 * MICRO * SEQ_LEN
    assert report["stage2"]["tokens"] == STEPS2 * MICRO * SEQ_LEN
    t, s = report["state_bytes"]["teacher"], report["state_bytes"]["student"]
    # teacher: K and V caches, 2 layers x 2 kv heads x 8 dims x 4 bytes per token each
    assert t["64"] == 64 * 2 * 2 * 2 * 8 * 4 and t["256"] == 4 * t["64"]
    # student: S [4 heads, 2F=16, Dv+1=9] + window K/V [4, 2 kv heads, 8] per layer, float32
    assert s["64"] == s["256"] == 2 * 4 * (4 * 16 * 9 + 2 * 4 * 2 * 8)
    for who in ("teacher", "student"):
        assert 0.0 <= report[who]["mqar_accuracy"] <= 1.0
    assert math.isfinite(report["teacher"]["ppl"]) and math.isfinite(report["student"]["ppl_stage1"])
    a = report["ablation"]
    print(f"ppl teacher {report['teacher']['ppl']:.2f}, student stage 1 {report['student']['ppl_stage1']:.2f}, "
          f"stage 2 {report['student']['ppl']:.2f}, without linear branch {a['ppl_without_linear']:.2f}")
    # a random teacher's ppl is near-uniform noise, so only the bookkeeping is checked here; the demo
    # (docs/linearize.md, a trained teacher) shows zeroing the linear branch raising perplexity
    assert a["raises_ppl"] == (a["ppl_without_linear"] > report["student"]["ppl"])
    assert a["ppl_without_linear"] != report["student"]["ppl"]


def test_output_loads_and_decodes_with_constant_state(lin_run, teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, report, _ = lin_run
    hf = AutoModelForCausalLM.from_pretrained(str(run_dir / "hf")).eval()
    model = hf.model
    assert model.cfg.mixer == "lizard" and all(type(b.mixer).__name__ == "LizardAttention" for b in model.blocks)
    assert len(AutoTokenizer.from_pretrained(str(run_dir / "hf"))) == VOCAB
    assert not any("lora" in name for name, _ in model.named_parameters())  # LoRA merged
    ids = torch.randint(3, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    check_generate_matches_forward(model, ids[:, :10], new_tokens=12)  # prefill + recurrent steps
    with torch.no_grad():
        state = model(ids[:, :10], return_state=True).state
        sizes = [state.nbytes()]
        for t in range(10, 40):
            _, state = model.step(ids[:, t], state)
            sizes.append(state.nbytes())
    assert len(set(sizes)) == 1, sizes
    # the teacher's other weights are in the student unchanged
    teacher = load_teacher(teacher_dir)
    assert torch.equal(model.blocks[1].mlp.down_proj.weight, teacher.blocks[1].mlp.down_proj.weight)


def test_tensorboard_holds_transfer_and_distill_scalars(lin_run):
    run_dir, _, _ = lin_run
    tags = {}
    for stage in ("stage1", "stage2"):
        events = EventAccumulator(str(run_dir / stage))
        events.Reload()
        tags[stage] = set(events.Tags()["scalars"])
    assert {"transfer/mse_layer_0", "transfer/mse_layer_1", "train/loss", "eval/loss"} <= tags["stage1"]
    assert {"distill/kl", "distill/ce", "distill/student_ppl", "train/loss", "eval/loss"} <= tags["stage2"]


@pytest.mark.slow
def test_rerun_resumes_both_finished_stages(linearize, lin_run):
    run_dir, report, argv = lin_run
    lines = [len(read_metrics(run_dir / s)) for s in ("stage1", "stage2")]
    again = linearize(argv)
    assert [len(read_metrics(run_dir / s)) for s in ("stage1", "stage2")] == [n + 1 for n in lines]  # eval only
    assert again["student"]["ppl"] == pytest.approx(report["student"]["ppl"], rel=1e-6)
    assert again["stage1"]["layer_mse_after"] == pytest.approx(report["stage1"]["layer_mse_after"], rel=1e-6)


# ------------------------------------------------------------------------------------------ library
def test_transfer_losses_are_per_layer_mse_against_the_teacher(teacher_dir):
    teacher = load_teacher(teacher_dir, dtype=torch.float64)
    mixers = build_student_mixers(teacher, "lizard", {"window": 4, "n_meta": 2})
    freeze_all_but_new(mixers)
    ids = torch.randint(3, VOCAB, (2, 19), generator=torch.Generator().manual_seed(0))
    losses = AttentionTransfer(teacher, mixers).layer_losses(ids)
    x, expected = teacher.embed(ids), []
    for block, student in zip(teacher.blocks, mixers):  # written out: the block's own forward
        h = block.mixer_norm(x)
        expected.append(((student(h)[0] - block.mixer(h)[0]) ** 2).mean())
        x, _ = block(x)
    assert rel_err(losses, torch.stack(expected).detach()) <= 1e-10
    losses.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())  # teacher frozen, not in the graph
    trained = {n for n, p in mixers.named_parameters() if p.grad is not None}
    assert trained == {f"{i}.{n}" for i in range(2) for n in new_parameter_names(mixers[0])}
    assert set(new_parameter_names(mixers[0])) == {"feature_q", "feature_k", "gate_proj.weight", "gate_proj.bias",
                                                   "meta_logits", "alpha"}
    assert not any(k.startswith("_teacher") or "embed" in k for k in AttentionTransfer(teacher, mixers).state_dict())


def test_kl_matches_closed_form():
    gen = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64), torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    p, q = t.softmax(-1), s.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert rel_err(kl_teacher_student(t, s), expected) <= 1e-10
    assert float(kl_teacher_student(t, t)) == pytest.approx(0.0, abs=1e-12)
    mask = torch.tensor([[True] * 5, [False] * 5])
    assert rel_err(kl_teacher_student(t, s, mask), (p * (p.log() - q.log())).sum(-1)[0].mean()) <= 1e-10
    p2, q2 = (t / 2).softmax(-1), (s / 2).softmax(-1)
    assert rel_err(kl_teacher_student(t, s, temperature=2.0), 4 * (p2 * (p2.log() - q2.log())).sum(-1).mean()) <= 1e-10


def test_lora_trains_only_adapters_and_merges_exactly(teacher_dir):
    teacher = load_teacher(teacher_dir, dtype=torch.float64)
    student = assemble_student(teacher, build_student_mixers(teacher, "lizard", {"window": 4}))
    wrapped = apply_lora(student, rank=2, alpha=4.0, target_modules=["q_proj", "v_proj", "o_proj"],
                         extra_trainable=["alpha"])
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.endswith("mixer.alpha") for n in trainable)
    assert sum("lora_" in n for n in trainable) == 2 * 3 * 2  # 2 layers x 3 projections x (A, B)
    for name, param in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, 0, 0.1)
    ids = torch.randint(3, VOCAB, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = wrapped(ids).logits
        merged = merge_lora(wrapped)
        assert type(merged).__name__ == "SeqLM" and not any("lora" in n for n, _ in merged.named_parameters())
        assert rel_err(merged(ids).logits, adapted) <= 1e-10
    with pytest.raises(ValueError, match="target_modules"):
        apply_lora(assemble_student(teacher, build_student_mixers(teacher, "lizard")), target_modules=["up_proj"])


def test_branch_ablation_switch_and_state_bytes(teacher_dir):
    teacher = load_teacher(teacher_dir, dtype=torch.float64)
    for mixer in ("lizard", "lolcats"):
        student = assemble_student(teacher, build_student_mixers(teacher, mixer, {"window": 4}))
        ids = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            full = student(ids).logits
            with linear_branch_disabled(student) as switched:
                ablated = student(ids).logits
                assert switched == 2
            assert torch.equal(student(ids).logits, full)  # restored
        assert rel_err(ablated[:, :4], full[:, :4]) <= 1e-10 if mixer == "lolcats" else True  # nothing left the window yet
        assert rel_err(ablated, full) > 1e-3
        assert decode_state_bytes(student, 16) == decode_state_bytes(student, 64)
    assert decode_state_bytes(teacher, 64) == 4 * decode_state_bytes(teacher, 16)
    with pytest.raises(ValueError, match="linear_branch_enabled"):
        with linear_branch_disabled(teacher):
            pass


@pytest.mark.parametrize("loss", ["kl", "ce", "kl+ce"])
def test_stage2_losses_match_closed_forms(teacher_dir, loss):
    teacher = load_teacher(teacher_dir, dtype=torch.float64)
    student = assemble_student(teacher, build_student_mixers(teacher, "lolcats", {"window": 4}))
    ids = torch.randint(3, VOCAB, (2, 13), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    labels[:, -1] = -100
    with torch.no_grad():
        t, s = teacher(ids).logits, student(ids).logits
    keep = labels != -100
    log_p, log_q = t.log_softmax(-1)[keep], s.log_softmax(-1)[keep]
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    ce = -log_q.gather(-1, labels[keep][:, None]).mean()
    expected = {"kl": 0.5 * kl, "ce": 2.0 * ce, "kl+ce": 0.5 * kl + 2.0 * ce}[loss]
    distiller = Distiller(student, teacher, loss, kl_weight=0.5, ce_weight=2.0)
    if loss == "ce":  # LM fine-tuning never runs the teacher
        teacher.forward = lambda *a, **k: pytest.fail("the teacher ran for stage2.loss ce")
    assert rel_err(distiller(ids, labels), expected) <= 1e-10
    assert set(distiller.pop_train_means()) == ({"ce"} if loss == "ce" else {"kl", "ce"})
    with pytest.raises(ValueError, match=r"stage2.loss must be one of \['kl', 'ce', 'kl\+ce'\], got 'mse'"):
        Distiller(student, teacher, "mse")
    with pytest.raises(ValueError, match="has a cross-entropy term: the batches need labels"):
        Distiller(student, teacher, "kl+ce")(ids)


def test_lolcats_student_takes_the_teachers_rotary(teacher_dir):
    """Stage 1 with the released LoLCATs student: rotary on (rope_theta copied), feature dim 64, and with a window
    that covers the sequence the transfer loss is 0 at init (the student is its teacher, rotary included)."""
    teacher = load_teacher(teacher_dir, dtype=torch.float64)
    ids = torch.randint(3, VOCAB, (2, 19), generator=torch.Generator().manual_seed(0))
    mixers = build_student_mixers(teacher, "lolcats", {"window": 19})
    assert all(m.options.rope and m.cfg.rope_theta == teacher.cfg.rope_theta and m.feature_dim == 64 for m in mixers)
    with torch.no_grad():
        assert float(AttentionTransfer(teacher, mixers).layer_losses(ids).max()) <= 1e-24
        without = build_student_mixers(teacher, "lolcats", {"window": 19, "rope": False})
        assert float(AttentionTransfer(teacher, without).layer_losses(ids).min()) > 1e-8
    assert set(new_parameter_names(mixers[0])) == {"feature_q", "feature_k", "window_logit"}


# ---------------------------------------------------------------------------------------- bad input
def test_bad_teachers(tmp_path, corpus_dir):
    with pytest.raises(ValueError, match="does not exist"):
        load_teacher(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_teacher(tmp_path / "empty")
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300).save_pretrained(str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        load_teacher(tmp_path / "gpt2")
    roped = make_llama(tmp_path / "scaled", corpus_dir, tokenizer=False,
                       rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope type 'linear'"):
        load_teacher(roped)
    windowed = make_llama(tmp_path / "mistral", corpus_dir, model_type="mistral", tokenizer=False, sliding_window=16)
    with pytest.raises(ValueError, match="sliding-window"):
        load_teacher(windowed)
    weightless = make_llama(tmp_path / "weightless", corpus_dir, tokenizer=False)
    (weightless / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="could not load the model weights"):
        load_teacher(weightless)


def test_bad_recipe_inputs(linearize, teacher_dir, corpus_dir, data_cache, tmp_path):
    with pytest.raises(ValueError, match="--teacher"):
        linearize(["--name", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="no from_attention"):
        linearize(run_argv(teacher_dir, corpus_dir, data_cache, tmp_path, **{"student.mixer": "gla"}))
    no_tok = make_llama(tmp_path / "no-tok", corpus_dir, tokenizer=False)
    with pytest.raises(ValueError, match="no tokenizer files"):
        linearize(run_argv(no_tok, corpus_dir, data_cache, tmp_path))
    small = make_llama(tmp_path / "small-vocab", corpus_dir, vocab_size=280)
    with pytest.raises(ValueError, match="tokenizer has 300 tokens but the teacher's vocab_size is 280"):
        linearize(run_argv(small, corpus_dir, data_cache, tmp_path))
    with pytest.raises(ValueError, match=r"the validation split has \d+ sequences of 32 tokens but one eval batch needs "
                                         r"4096 \(4096 per process x 1 process\(es\)\): raise data.validation_fraction "
                                         r"\(now 0.1\)"):
        linearize(run_argv(teacher_dir, corpus_dir, data_cache, tmp_path, **{"ds.train_micro_batch_size_per_gpu": 4096}))


def test_check_tokenizer_and_missing_teacher_dir(tmp_path):
    class Tok:
        def __len__(self):
            return 10

    check_tokenizer(Tok(), 10)
    with pytest.raises(ValueError, match="tokenizer has 10 tokens but the teacher's vocab_size is 9"):
        check_tokenizer(Tok(), 9)


# ------------------------------------------------------------------------------------- two processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_losses(run_dir: Path, stage: str) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / stage) if "loss" in r}


@pytest.mark.slow
def test_two_processes_zero2_match_one_process(teacher_dir, corpus_dir, data_cache, tmp_path):
    """`deepspeed --num_gpus 2` (gloo, ZeRO-2, 2 x 4 sequences, each rank its shard, the teacher replicated) gives
    the loss curves of one process with 8 sequences, in both stages (LoLCATs student, stage-2 loss kl+ce). Per-rank
    means are all-reduced in another order, so float32 rounding differs (~1e-7 a step) and compounds; 1e-5
    relative bounds it (measured: see the print)."""
    recipe = str(REPO / "recipes" / "linearize.py")
    common = {"student.mixer": "lolcats", "student.options.n_meta": None, "stage2.loss": "kl+ce",
              "stage1.train.steps": 12, "stage2.train.steps": 8, "stage1.train.save_every": 100,
              "stage2.train.save_every": 100, "report.ablation": "false"}
    runs = {"one": ([sys.executable, recipe], {"ds.train_micro_batch_size_per_gpu": 8}),
            "two": ([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                     str(free_port()), recipe], {"ds.train_micro_batch_size_per_gpu": 4, "deepspeed_config": "zero2.json"})}
    curves = {}
    for name, (launcher, extra) in runs.items():
        argv = run_argv(teacher_dir, corpus_dir, data_cache, tmp_path, **{**common, **extra, "name": name})
        start = time.time()
        proc = subprocess.run([*launcher, *argv], cwd=REPO, capture_output=True, text=True, timeout=1200)
        print(f"{name}: {time.time() - start:.1f} s")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        curves[name] = [stage_losses(tmp_path / name, s) for s in ("stage1", "stage2")]
    for stage, steps, one, two in zip(("stage1", "stage2"), (12, 8), curves["one"], curves["two"]):
        assert sorted(one) == sorted(two) == list(range(1, steps + 1))
        assert one[steps] < one[1], one
        worst = max(abs(two[s] - one[s]) / abs(one[s]) for s in one)
        print(f"{stage}: max relative loss difference 2 processes vs 1 over {steps} steps: {worst:.2e}")
        assert worst <= 1e-5
    assert (tmp_path / "two" / "hf" / "config.json").is_file()
