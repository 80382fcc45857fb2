"""Model store throughput and size: versions written and read per second on SQLite and on PostgreSQL, the
store's size for 100 versions of the demo model, and what storing LoRA adapters (over a frozen base) instead
of full weights saves per version.

- Write: one version = copy a finished run directory into staging, checksum every file into MANIFEST.json,
  rename into versions/, commit its row (the whole `Store.add_version`). Read: `Store.version(n)` (the index)
  and `Store.directory(v)` (every file checked against the manifest), and the index alone (`versions()`).
- Size: the demo's model (MLP 2x400 on Fashion-MNIST, replay memory 500: the `replay` run of `lifelong demo`)
  as 100 versions; each version holds the run's checkpoint (weights, SGD state, replay memory), results,
  events and report.
- LoRA: a Llama-architecture model (hidden 512, 8 layers, vocabulary 8192: ~35M parameters, random, built
  from a config) trained a few steps on text, once fully and once with LoRA (rank 8, `merge: false`): the
  version directory of each.

    python bench/store.py            # ~5 min; writes docs/BENCHMARKS.md section `store`
    python bench/store.py --quick    # smoke: 5 versions, SQLite and PostgreSQL if a server can start
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from docsection import write_section  # noqa: E402

from lifelong.config import parse_config  # noqa: E402
from lifelong.demo import DEMO_CONFIG  # noqa: E402
from lifelong.experiment import run_config  # noqa: E402
from lifelong.store import Store, records  # noqa: E402
from lifelong.store.records import RUN  # noqa: E402
from lifelong.store.store import copy_run  # noqa: E402

BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def demo_run(out: Path, train_per_class: int | None) -> Path:
    raw = {**DEMO_CONFIG, "method": {"name": "replay", "memory": 500}}
    if train_per_class:
        raw["data"] = {**raw["data"], "train_per_class": train_per_class}
    run_config(parse_config(raw), out, progress=False)
    return out


def fill(store: Store, run_dir: Path, n: int) -> dict[str, float]:
    """Write `n` versions of `run_dir` (a chain: each the child of the previous), then read them back."""
    stream_records = json.loads((run_dir / "run.json").read_text())["stream"]["experiences"]
    data = [{**e, "id_source": "content", "ids_sha256": None} for e in stream_records]
    architecture = records.architecture(run_dir)
    metrics = records.metrics(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    began = time.perf_counter()
    parent = None
    for _ in range(n):
        staged = store.new_staging()
        copy_run(run_dir, staged / RUN)
        v = store.add_version(
            staged, parent=parent, origin="import", architecture=architecture, kind="classification",
            config=config, methods=["replay"], data=data, metrics=metrics, gate=None, promote=True,
            reason="bench", expected_promoted=parent,
        )  # fmt: skip
        parent = v.number
    write = time.perf_counter() - began
    began = time.perf_counter()
    for number in range(1, n + 1):
        store.directory(store.version(number))  # index row + every file verified
    read = time.perf_counter() - began
    began = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        store.versions()
    listing = (time.perf_counter() - began) / rounds
    return {
        "versions": n,
        "write_per_s": n / write,
        "read_verified_per_s": n / read,
        "list_seconds": listing,
        "store_bytes": size_of(store.path),
        "version_bytes": size_of(store.directory(store.version(1))),
    }


def lora_sizes(tmp: Path, quick: bool) -> dict[str, Any]:
    """Version directory sizes of a full fine-tune and of LoRA (merge: false) of the same Llama model."""
    import torch
    import transformers

    hidden, layers, vocab = (128, 2, 512) if quick else (512, 8, 8192)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp / "llama"
    model.save_pretrained(folder)
    # the folder needs a tokenizer: a byte-level BPE trained here on the text it will see
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [f"version {i} of the store keeps the model current without forgetting " * 4 for i in range(400)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<eos>"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    fast.save_pretrained(folder)
    text_dir = tmp / "text"
    text_dir.mkdir()
    (text_dir / "a.txt").write_text("\n\n".join(texts[:200]))
    params = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {"parameters": params, "hidden": hidden, "layers": layers, "vocab": vocab}
    lora = {"name": "lora", "rank": 8, "merge": False, "train_head": False}
    for name, method in (("full", {"name": "naive"}), ("lora", lora)):
        raw = {
            "scenario": {"type": "files", "path": str(text_dir), "block_size": 32, "max_tokens": 2048},
            "model": {"name": "hf", "path": str(folder)},
            "method": method,
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-4},
        }
        run_dir = tmp / f"run-{name}"
        run_config(parse_config(raw), run_dir, progress=False)
        store = Store.init(tmp / f"store-{name}")
        staged = store.new_staging()
        copy_run(run_dir, staged / RUN)
        v = store.add_version(
            staged, parent=None, origin="import", architecture=records.architecture(run_dir),
            kind="language_modeling", config=raw, methods=[method["name"]], data=[],
            metrics=records.metrics(run_dir), gate=None, promote=True, reason="bench",
        )  # fmt: skip
        out[f"{name}_bytes"] = size_of(store.directory(v))
        checkpoint = next(p for p in (store.directory(v) / RUN / "checkpoints").iterdir() if p.is_dir())
        out[f"{name}_files"] = {p.name: p.stat().st_size for p in sorted(checkpoint.iterdir())}
    out["saving"] = 1 - out["lora_bytes"] / out["full_bytes"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="smoke run, no doc section")
    parser.add_argument("--versions", type=int, default=None, help="versions written per backend (100)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    n = args.versions or (5 if args.quick else 100)
    began = time.perf_counter()
    result: dict[str, Any] = {"date": date.today().isoformat(), "versions": n}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_dir = demo_run(tmp / "demo", 20 if args.quick else None)
        result["run_bytes"] = size_of(run_dir)
        result["sqlite"] = fill(Store.init(tmp / "sqlite"), run_dir, n)
        try:
            from postgres_server import PostgresServer

            server = PostgresServer()
        except (FileNotFoundError, RuntimeError) as e:
            result["postgres"] = {"skipped": str(e)}
        else:
            try:
                # a server with durable commits (the test server runs with fsync off)
                result["postgres"] = fill(Store.init(tmp / "pg", db=server.new_database()), run_dir, n)
            finally:
                server.stop()
        result["lora"] = lora_sizes(tmp, args.quick)
    result["seconds"] = time.perf_counter() - began
    result["machine"] = f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}"
    print(json.dumps(result, indent=2))
    if not args.quick and not args.no_write:
        write_doc(result)
    return result


def write_doc(r: dict[str, Any]) -> None:
    def row(name: str, m: dict[str, Any]) -> str:
        if "skipped" in m:
            return f"| {name} | skipped: {m['skipped']} | | | |"
        return (
            f"| {name} | {m['write_per_s']:.1f} | {m['read_verified_per_s']:.1f} "
            f"| {m['list_seconds'] * 1000:.1f} | {m['store_bytes'] / 1e6:.1f} |"
        )

    lo, sq = r["lora"], r["sqlite"]
    lines = [
        f"Generated {r['date']} by `python bench/store.py` ({r['seconds'] / 60:.0f} min; {r['machine']}).",
        "",
        f"{r['versions']} versions of the demo's replay run (MLP 2x400, Fashion-MNIST, replay memory 500; "
        f"one version directory {sq['version_bytes'] / 1e6:.1f} MB), written as a chain (each the child of "
        "the last, and promoted), then each read back with every file verified against its manifest. The "
        "PostgreSQL server is a local one the bench starts (tests/postgres_server.py, fsync off: its "
        "commits cost less than on a durable server; the version files are fsynced either way).",
        "",
        "| index | versions written / s | read + verified / s | list all (ms) | store size (MB) |",
        "|---|---:|---:|---:|---:|",
        row("SQLite (WAL)", sq),
        row("PostgreSQL", r["postgres"]),
        "",
        f"LoRA deltas: a Llama-architecture model of {lo['parameters'] / 1e6:.1f} M parameters (hidden "
        f"{lo['hidden']}, {lo['layers']} layers, vocabulary {lo['vocab']}), one version after a short "
        f"training: full fine-tuning {lo['full_bytes'] / 1e6:.1f} MB per version (its checkpoint's "
        f"model.safetensors {lo['full_files']['model.safetensors'] / 1e6:.1f} MB, every weight; "
        f"optimizer.safetensors {lo['full_files'].get('optimizer.safetensors', 0) / 1e6:.2f} MB); LoRA "
        f"rank 8 on every projection, `merge: false`, `train_head: false`: {lo['lora_bytes'] / 1e6:.2f} MB "
        f"(model.safetensors {lo['lora_files']['model.safetensors'] / 1e6:.2f} MB: the adapters only, and "
        f"base.json, the base's SHA-256): {lo['saving']:.1%} less per version. The base is stored once, "
        "where the config points (a Hugging Face folder, or the SmolLM2 cache).",
    ]
    intro = (
        "Regenerate with `.venv/bin/python bench/store.py` (about 5 minutes); `--quick` is the smoke "
        "version the test suite runs."
    )
    write_section(BENCHMARKS_MD, "store", "\n".join(lines), "## Model store: throughput and size", intro)


if __name__ == "__main__":
    main()
