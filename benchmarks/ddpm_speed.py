"""DDPM training throughput: where one train step's time goes, and what the presets and options cost.

    python benchmarks/ddpm_speed.py [--steps 60] [--batch 32] [--variants unet,compact-bf16,...]

Each variant is a DiffusionConfig override, built and trained on random 28x28x1 batches in this process, side by
side: the first `--warmup` steps (tracing) are excluded, then `--steps` steps are timed. Ablations of the default
U-Net (no attention, one level less, no GroupNorm-heavy residual pairs) say which parts cost what; precision
and XLA variants say what the hardware gives. Results: benchmarks/results/ddpm_speed.json and a Markdown table.
"""
import argparse
import time

from common import save_results  # first: sets up sys.path and the environment
import numpy as np
import tensorflow as tf

from trainers import registry

# Each variant pins its precision: the presets' "auto" would differ from machine to machine.
F32, BF16 = {"precision": "float32"}, {"precision": "mixed_bfloat16"}
VARIANTS = {
    "unet": ("ddpm_unet", F32),
    "unet-no-attention": ("ddpm_unet", {**F32, "attention": False}),
    "unet-2-levels": ("ddpm_unet", {**F32, "channel_multipliers": (1, 2)}),
    "unet-base-16": ("ddpm_unet", {**F32, "base_channels": 16}),
    "unet-xla": ("ddpm_unet", {**F32, "jit_compile": True}),
    "unet-bf16": ("ddpm_unet", BF16),
    "compact": ("ddpm", F32),
    "compact-xla": ("ddpm", {**F32, "jit_compile": True}),
    "compact-bf16": ("ddpm", BF16),
    "compact-bf16-xla": ("ddpm", {**BF16, "jit_compile": True}),
    "compact-no-ema": ("ddpm", {**F32, "ema_decay": 0.0}),
}


def step_time(model_name: str, overrides: dict, batch: int, steps: int, warmup: int) -> dict:
    config = registry.make_config(model_name, {"batch_size": batch, **overrides})
    model = registry.get_model(model_name).family.build(config, (28, 28, 1))
    images = np.random.default_rng(0).uniform(-1, 1, (batch * (steps + warmup), 28, 28, 1)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch).cache()
    started = time.perf_counter()
    model.fit(dataset.take(warmup), epochs=1, verbose=0)
    traced = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(dataset.skip(warmup), epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return {"params": int(model.network.count_params()), "first_steps_s": round(traced, 1),
            "ms_per_step": round(1000 * seconds / steps, 1), "images_per_s": round(batch * steps / seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    results = {"batch": args.batch, "steps": args.steps, "warmup": args.warmup, "variants": {}}
    for name in args.variants.split(","):
        model_name, overrides = VARIANTS[name]
        try:
            results["variants"][name] = step_time(model_name, overrides, args.batch, args.steps, args.warmup)
        except Exception as error:  # pylint: disable=broad-except  (a variant this TF cannot run is reported)
            results["variants"][name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
        print(name, results["variants"][name], flush=True)
    print(f"\n| variant | parameters | ms/step (batch {args.batch}) | images/s | first {args.warmup} steps (s) |")
    print("|---|---|---|---|---|")
    for name, row in results["variants"].items():
        if "error" in row:
            print(f"| {name} | | {row['error']} | | |")
        else:
            print(f"| {name} | {row['params']:,} | {row['ms_per_step']} | {row['images_per_s']} | "
                  f"{row['first_steps_s']} |")
    print("results:", save_results("ddpm_speed", results))


if __name__ == "__main__":
    main()
