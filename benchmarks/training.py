"""Training throughput: the platform's fine-tune step beside a bare peft/transformers loop.

Both train LoRA on the same model, the same encoded examples in the same order, with the same
hyperparameters, in this one process; the bare loop is the minimum any LoRA fine-tune must do.
Tokens/s counts non-padding tokens over the optimisation steps only (loading and saving are
reported separately by the platform and would be the same for both).

    .venv/bin/python benchmarks/training.py                  # tiny Llama, quick
    .venv/bin/python benchmarks/training.py --model smollm2  # the real base model (prepared first)
    .venv/bin/python benchmarks/training.py --tracking-uri http://127.0.0.1:5000  # + MLflow logging
    python benchmarks/training.py --model shape:FOLDER --device cuda  # SmolLM2's shape, random weights

`shape:FOLDER` builds a model from FOLDER's config.json and tokenizer with random weights: the
same architecture and token counts, so the same speed, where the 540 MB of weights cannot go
(a GPU machine reached through a 64 MiB copy). `--device` applies to both loops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiplat.training.lora import FineTuneParams, collate, encode_examples, fine_tune, seed_everything, split_rows  # noqa: E402
from aiplat.training.sample import sample_training_set  # noqa: E402


def bare_loop(base_dir: Path, df, params: FineTuneParams) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aiplat.training.lora import resolve_device

    device = resolve_device(params.device)
    seed_everything(params.seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha,
                                             lora_dropout=params.lora_dropout,
                                             target_modules=list(params.target_modules), task_type="CAUSAL_LM"))
    train, _ = split_rows(df, params)
    examples = encode_examples(tok, train, params.max_length)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.learning_rate)
    order = torch.Generator().manual_seed(params.seed)
    queue: list[int] = []
    tokens = 0
    model.train()
    start = time.perf_counter()
    for _ in range(params.steps):
        batch = []
        while len(batch) < params.batch_size:
            if not queue:
                queue = torch.randperm(len(examples), generator=order).tolist()
            batch.append(examples[queue.pop(0)])
        ids, mask, labels = (t.to(device) for t in collate(batch, tok.pad_token_id))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach().cpu())  # the platform reads each loss too: the same synchronisation
        tokens += int(mask.sum())
    return tokens / (time.perf_counter() - start)


def random_weights_like(source: Path, dest: Path) -> Path:
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
    model.save_pretrained(dest, safe_serialization=True)
    for f in source.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy2(f, dest / f.name)
    return dest


def platform_step(base_dir: Path, df, params: FineTuneParams, out: Path, tracking_uri: str | None) -> float:
    if tracking_uri is None:
        return fine_tune(base_dir, df, params, out).tokens_per_second
    from mlflow.tracking import MlflowClient

    from aiplat.training.data import training_set_hash
    from aiplat.training.tracking import Lineage, tracked_fine_tune

    lineage = Lineage("benchmark", "fine_tuned_model", "bench", "bench", training_set_hash(df), "bench", str(base_dir))
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    tracked = tracked_fine_tune(client, tracking_uri, "benchmarks", "benchmark-triage", lineage, base_dir, df, params, out)
    return tracked.result.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny | smollm2 | shape:FOLDER")
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="Examples per step (default 4)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aiplat-bench-"))
    df = sample_training_set(120)
    if args.model == "tiny":
        from tests.training_helpers import build_tiny

        base = build_tiny(work / "tiny")
        params = FineTuneParams(steps=args.steps or 30, learning_rate=5e-3, batch_size=4, max_length=160, seed=1)
    else:
        if args.model.startswith("shape:"):
            base = random_weights_like(Path(args.model.split(":", 1)[1]), work / "shape")
        elif args.model == "smollm2":
            from aiplat.models.base import prepare_base_model

            base = prepare_base_model().path
        else:
            parser.error(f"unknown --model {args.model!r}")
        params = FineTuneParams(steps=args.steps or 6, batch_size=4, max_length=256, seed=1)
    if args.device != "auto":
        params = params.model_copy(update={"device": args.device})
    if args.batch_size:
        params = params.model_copy(update={"batch_size": args.batch_size})

    bare, plat = [], []
    for i in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        bare.append(bare_loop(base, df, params))
        plat.append(platform_step(base, df, params, work / f"run{i}", args.tracking_uri))
        print(f"round {i + 1}: bare {bare[-1]:.0f} tok/s, platform {plat[-1]:.0f} tok/s", flush=True)
    b, p = statistics.median(bare), statistics.median(plat)
    from aiplat.training.lora import resolve_device

    print(f"model={args.model} device={resolve_device(params.device)} steps={params.steps} "
          f"batch={params.batch_size} tracking={'mlflow' if args.tracking_uri else 'off'}")
    print(f"bare peft loop:      {b:10.1f} tokens/s (median of {args.repeats})")
    print(f"platform fine-tune:  {p:10.1f} tokens/s (median of {args.repeats})")
    print(f"ratio platform/bare: {p / b:10.3f}")


if __name__ == "__main__":
    main()
