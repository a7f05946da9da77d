"""Generative quality on the real MNIST at equal wall-clock: FID, KID and mode coverage of VAE, DCGAN, WGAN-GP and
DDPM, each from its EMA weights and from its raw weights, plus DDPM's sampler steps against quality.

    python benchmarks/generative.py [--minutes 15 | --steps N] [--only vae,dcgan,wgan_gp,ddpm,ddpm_cond]
                                    [--set ddpm:precision=float32] [--label=-f32] [--samples 1000]
                                    [--ddim-steps 5,10,20,25,50] [--ancestral-samples 100]

A model named MODEL@VARIANT in --only is MODEL with the settings --set gives MODEL@VARIANT, so variants train side
by side in one run, e.g. the mode-collapse remedies:

    python benchmarks/generative.py --steps 10000 --only dcgan,dcgan@mbstd,dcgan@fm,dcgan@replay \
        --set dcgan@mbstd:minibatch_stddev=4 --set dcgan@fm:feature_matching=1.0 --set dcgan@replay:replay_size=3200

The metric network (evaluation.scoring, as the pipeline's MetricNetworkTrainer trains it) learns the 60,000
labelled training digits; its features of the training split are the reference. Each model trains on the 60,000
training digits for the same wall-clock budget (`--minutes`, tracing included: the clock starts before the first
step; training stops at the first step past the budget), is exported as the pipeline exports it, and is scored
from its SavedModel exactly as the ModelEvaluator scores it (`--samples` images). Models with a weight average
are exported and scored twice: as trained (the EMA samples) and with the raw weights copied into the average.
For the DDPMs: their sampler (DDIM at the configured eta by default) at each of `--ddim-steps` on `--samples`
images, and DDPM's full ancestral sampling (all T steps) beside the default steps on `--ancestral-samples` images,
each timed (per 1,000 images); benchmarks/ddpm_samplers.py compares samplers on the weights kept here.
A class-conditional model (ddpm_cond) trains on every digit's label and is asked for classes 0-9 in turn: its
conditional accuracy (the metric network recognises the asked class) and per-class FID, at each guidance scale.
Every epoch the pipeline's best-epoch proxy (trainers/best_epoch.py: KID of 400 samples in the metric network's
space) is measured; the model is scored at its last epoch and at the epoch the proxy picks (`best_scores`, FID at
the best epoch against the last in the table), from the same run.
Results: benchmarks/results/generative.json, pictures in benchmarks/results/generative-*.png, a Markdown table.

The spread of one configuration over seeds (`--seeds 1,2,3`: each model trained once per seed, keys MODEL-seedS,
all scored by one metric network; `--results` keeps them apart from the figures they qualify):

    python benchmarks/generative.py --only dcgan,ddpm --seeds 1,2 --steps dcgan=14433,ddpm=13126 \
        --last-epoch-only --ddim-steps= --ancestral-samples 0 --results generative-seeds
"""
import argparse
import ast
import dataclasses
import json
import os
import tempfile
import time

from common import RESULTS_DIR, Timer, load_mnist, load_results, save_results  # first: sys.path, environment
import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainers import export
from serving.model import read_metadata
from evaluation import figures, scoring
from trainers import best_epoch, job as training, registry
from trainers.common import resolve_precision

MODELS = ("vae", "dcgan", "wgan_gp", "ddpm")
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 3.0, 4.0)  # a conditional DDPM's sweep (0: unconditional)


class WallClockBudget(keras.callbacks.Callback):
    """Stops training at the first step that ends after `seconds` from its creation (or after `max_steps`
    steps, a budget other work on the machine cannot shrink); counts the steps."""

    def __init__(self, seconds: float, max_steps: int = 0):
        super().__init__()
        self.seconds, self.max_steps, self.started, self.steps = seconds, max_steps, time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.max_steps and self.steps >= self.max_steps or (
                not self.max_steps and time.perf_counter() - self.started > self.seconds):
            self.model.stop_training = True


def parse_overrides(items):
    """["ddpm:precision=float32", ...] -> {model: {field: value}}."""
    overrides = {}
    for item in items:
        name, _, assignment = item.partition(":")
        field, _, text = assignment.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        overrides.setdefault(name, {})[field] = value
    return overrides


def train_for(name, seconds, x_train, y_train, overrides, max_steps=0, callbacks=()):
    name = name.split("@")[0]  # MODEL@VARIANT: the model, with the variant's overrides
    entry = registry.get_model(name)
    classes = {"num_classes": 10} if entry.family.conditional else {}  # as `latentforge run` sets it
    config = registry.make_config(name, {"epochs": 10_000, **classes, **overrides})
    pixels = x_train * 2.0 - 1.0 if entry.pixel_range == "symmetric" else x_train
    # A conditional model gets (image, label) pairs, every digit labelled (the pipeline's full-label case).
    examples = (pixels, y_train.astype(np.int32)) if entry.family.conditional else pixels
    data = tf.data.Dataset.from_tensor_slices(examples).shuffle(10_000, seed=0).batch(config.batch_size).prefetch(2)
    budget = WallClockBudget(seconds, max_steps)
    model = entry.build(config, (28, 28, 1))
    history = entry.family.fit(model, config, data, None, [*callbacks, budget], 0)  # a proxy first: it adds to logs
    elapsed = time.perf_counter() - budget.started
    return entry, config, model, history, {"train_s": elapsed, "steps": budget.steps,
                                           "images_seen": budget.steps * config.batch_size,
                                           "epochs_seen": budget.steps * config.batch_size / len(x_train),
                                           "images_per_s": budget.steps * config.batch_size / elapsed}


def score(entry, model, directory, count, network, reference, inputs=None, seed=0, export_first=True,
          shape=(28, 28, 1)):
    """Exports `model` (for images of `shape`) as the pipeline does and scores `count` images from its SavedModel
    as the Evaluator does (a conditional model's images are asked for classes 0-9 in turn: conditional accuracy and
    per-class FID)."""
    if export_first:
        export.export_model(entry.family, model, shape, directory, entry.pixel_range)
    loaded = tf.saved_model.load(directory)
    signature = loaded.signatures[entry.family.generate_signature]
    # The exporter's defaults for the signature's other inputs (StyleGAN's truncation), as the Evaluator uses them.
    takes = set(signature.structured_input_signature[1])
    defaults = {k: v for k, v in read_metadata(loaded).get("generate_defaults", {}).items() if k in takes}
    inputs = {**defaults, **(inputs or {})}
    with Timer() as timer:
        samples = scoring.generate(signature, count, seed, 250, inputs)
    features, classes = network(samples)
    scores = {"sample_s": timer.seconds, **scoring.feature_scores(features, classes, reference)}
    if entry.family.conditional:
        requested = scoring.requested_labels(count, 250, inputs["labels"])
        scores.update(scoring.conditional_scores(features, classes, requested, reference, 10))
    return samples, scores


def guidance_sweep(entry, model, directory, count, network, reference, inputs, picture_prefix):
    """A conditional model's SavedModel at each of GUIDANCE_SCALES on the same seeds: FID, conditional accuracy,
    mean per-class FID; a picture with a row per scale and a column per class, all from the same noise."""
    sweep, rows = {}, []
    for scale in GUIDANCE_SCALES:
        samples, sweep[str(scale)] = score(entry, model, directory, count, network, reference,
                                           {**inputs, "guidance": scale}, export_first=False)
        rows.append(samples[:10])
        print(f"guidance {scale}", sweep[str(scale)], flush=True)
    figures.save_png(f"{picture_prefix}-guidance.png", figures.image_grid(np.concatenate(rows), 10))
    return sweep


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget per model")
    parser.add_argument("--steps", default="0", help="a budget in training steps instead of minutes: N for every "
                        "model, or MODEL=N,... (e.g. the step counts of earlier runs, on a machine of another speed)")
    parser.add_argument("--samples", type=int, default=1000, help="generated images scored per model")
    parser.add_argument("--ddim-steps", default="5,10,20,25,50")
    parser.add_argument("--ancestral-samples", type=int, default=100)
    parser.add_argument("--metric-epochs", type=int, default=3)
    parser.add_argument("--only", default=",".join(MODELS))
    parser.add_argument("--set", action="append", default=[], help="MODEL:FIELD=VALUE, e.g. ddpm:ema_decay=0.9999")
    parser.add_argument("--label", default="", help="suffix of the result keys (a second configuration)")
    parser.add_argument("--seeds", default="", help="train each model once per seed (the config's `seed`: initial "
                        "weights and noise; and the data order), keys MODEL-seedS; default: the config's seed")
    parser.add_argument("--results", default="generative", help="benchmarks/results/RESULTS.json")
    parser.add_argument("--train-subset", type=int, help="train the models on the first N digits (a quick check)")
    parser.add_argument("--last-epoch-only", action="store_true",
                        help="no best-epoch proxy (by default every epoch is scored and the best one is scored too)")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    step_budgets = {name: int(n) for name, _, n in (item.partition("=") for item in args.steps.split(",")) if n}
    default_steps = 0 if step_budgets else int(args.steps)
    x_train, y_train, x_test, y_test = load_mnist()
    model_train = x_train[:args.train_subset] if args.train_subset else x_train
    results = load_results(args.results) if not args.train_subset else {}
    results.update(samples=args.samples)
    work = tempfile.mkdtemp(prefix="generative-")
    pictures = RESULTS_DIR if not args.train_subset else work

    config = scoring.MetricNetworkConfig(epochs=args.metric_epochs)
    with Timer() as timer:
        network_model = scoring.build_metric_network((28, 28, 1), 10, config)
        network_model.fit(x_train, y_train, batch_size=config.batch_size, epochs=config.epochs, verbose=2)
    scoring.export_metric_network(network_model, os.path.join(work, "metric"))
    network = scoring.MetricNetwork(os.path.join(work, "metric"))
    train_features, _ = network(x_train)
    reference = scoring.FeatureReference.from_features(train_features, y_train, 10)
    reference.save(work)  # beside work/metric: where the best-epoch proxy reads them
    _, predicted = network(x_test)
    results["metric_network"] = {
        "epochs": config.epochs, "seconds": timer.seconds, "test_accuracy": float(np.mean(predicted == y_test)),
        f"test_{args.samples}_vs_train": scoring.generative_scores(x_test[:args.samples], network, reference)}
    print("metric network", results["metric_network"], flush=True)

    seeds = [int(seed) for seed in args.seeds.split(",") if seed] or [None]
    for name, seed in ((name, seed) for name in args.only.split(",") for seed in seeds):
        key = name + args.label + (f"-seed{seed}" if seed is not None else "")
        model_overrides = overrides.get(name, {})
        if seed is not None:  # the config's seed (the build seeds the weights with it), and the data order's
            model_overrides = {**model_overrides, "seed": seed}
            keras.utils.set_random_seed(seed)
        # The pipeline's best-epoch proxy (trainers/best_epoch.py) on every epoch: the model is scored at its last
        # epoch as always, then at the epoch the proxy picks ("best_scores"), from the same run.
        proxy = None if args.last_epoch_only else best_epoch.SampleQualityProxy(
            registry.get_model(name.split("@")[0]).family, (28, 28, 1), registry.get_model(name.split("@")[0]).pixel_range,
            os.path.join(work, "metric"), work)
        step_budget = step_budgets.get(name, default_steps)
        entry, model_config, model, history, row = train_for(name, 60 * args.minutes, model_train,
                                                             y_train[:len(model_train)], model_overrides,
                                                             step_budget, [proxy] if proxy else [])
        row.update(budget={"steps": step_budget} if step_budget else {"minutes": args.minutes},
                   batch_size=model_config.batch_size, precision=resolve_precision(model_config.precision),
                   overrides=model_overrides, train_images=len(model_train),
                   last_losses={k: v[-1] for k, v in history.items()})
        # The trained weights (raw and EMA) and every config field, so samplers can be compared later without
        # retraining (benchmarks/ddpm_samplers.py reads them).
        row["weights"] = os.path.join(work, key + "-weights")
        model.save_weights(os.path.join(row["weights"], training.WEIGHTS))  # where training.load_weights reads
        with open(os.path.join(row["weights"], "config.json"), "w") as f:
            json.dump({"model": name.split("@")[0], "config": dataclasses.asdict(model_config)}, f, indent=1)
        steps = getattr(model_config, "sample_steps", None)
        inputs = {"steps": steps} if steps else {}
        if entry.family.conditional:  # classes 0-9 in turn; a DDPM at its configured guidance
            inputs["labels"] = list(range(10))
            if hasattr(model_config, "guidance"):
                inputs["guidance"] = model_config.guidance
        samples, row["scores"] = score(entry, model, os.path.join(work, key), args.samples, network, reference,
                                       inputs)
        columns = 10 if entry.family.conditional else 8  # a conditional model's columns are its classes 0-9
        figures.save_png(os.path.join(pictures, f"generative-{key}.png"),
                         figures.image_grid(samples[:8 * columns], columns))
        if "guidance" in inputs:
            row["guidance"] = guidance_sweep(entry, model, os.path.join(work, key), args.samples, network,
                                             reference, inputs, os.path.join(pictures, f"generative-{key}"))
        row["seed"] = seed
        if entry.family.name == "diffusion" and (args.ddim_steps or args.ancestral_samples):
            row["samplers"] = sampler_sweep(model, args, network, reference,
                                            os.path.join(pictures, f"generative-{key}"))
        if model.weight_averages():
            # The same run scored from its raw weights: copied into the average, exported and scored again.
            for average, raw in model.weight_averages():
                average.network.set_weights(raw.get_weights())
            raw_samples, row["raw_scores"] = score(entry, model, os.path.join(work, key + "-raw"), args.samples,
                                                   network, reference, inputs)
            figures.save_png(os.path.join(pictures, f"generative-{key}-raw.png"),
                             figures.image_grid(raw_samples[:64], 8))
        if proxy is not None and proxy.values:
            # Last: it restores every weight (the average included) to the best epoch's, after the raw scoring.
            row.update(proxy=history.get(best_epoch.PROXY_METRIC), proxy_s=sum(history.get(best_epoch.PROXY_SECONDS, [])),
                       kept_epoch=proxy.restore_best(model), epochs=len(proxy.values))
            if row["kept_epoch"] == row["epochs"]:
                row["best_scores"] = row["scores"]
            else:
                best_samples, row["best_scores"] = score(entry, model, os.path.join(work, key + "-best"), args.samples,
                                                         network, reference, inputs)
                figures.save_png(os.path.join(pictures, f"generative-{key}-best.png"),
                                 figures.image_grid(best_samples[:8 * columns], columns))
        results[key] = row
        print(key, row, flush=True)
        if not args.train_subset:
            save_results(args.results, results)
    print_table(results, args.samples)
    if not args.train_subset:
        print("saved", save_results(args.results, results))


def sampler_sweep(model, args, network, reference, picture_prefix):
    """A trained DDPM (its EMA weights) sampled by its sampler at each of --ddim-steps on --samples images, then
    DDPM's full ancestral sampler (all T steps, eta = 1) and its default steps on --ancestral-samples images
    (the full sampler's cost decides that count; FID compares like for like only at equal counts)."""
    def run(label, steps, count, sample):
        with Timer() as timer:
            images = np.concatenate([(sample(min(250, count - start), 1000 + start).numpy() + 1.0) / 2.0
                                     for start in range(0, count, 250)])
        row = {"steps": steps, "samples": count, "s_per_1000_images": 1000 * timer.seconds / count,
               **scoring.generative_scores(images, network, reference)}
        print(label, row, flush=True)
        return row, images

    sweep = {}
    model.generate(1, 0, steps=1)  # traces the sampler once: no row's time includes it
    for steps in (int(s) for s in args.ddim_steps.split(",") if s):
        sweep[f"ddim_{steps}"], _ = run(f"ddim_{steps}", steps, args.samples,
                                        lambda n, seed, steps=steps: model.generate(n, seed, steps=steps))
    count, default, timesteps = args.ancestral_samples, model.sample_steps, model.diffusion.timesteps
    if not count:
        return sweep
    sweep[f"ddim_{default}_x{count}"], _ = run(f"ddim_{default}", default, count,
                                               lambda n, seed: model.generate(n, seed))
    sweep[f"ancestral_{timesteps}_x{count}"], images = run("ancestral", timesteps, count, model.ancestral_sample)
    figures.save_png(f"{picture_prefix}-ancestral.png", figures.image_grid(images[:64], 8))
    return sweep


def print_table(results, samples):
    print(f"\n| model | budget (min) | steps | images/s | precision | FID (EMA) | FID (raw) | KID x1e3 | "
          f"mode entropy (max 2.303) | mode KL | sampling s ({samples}) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    floor = results["metric_network"][f"test_{samples}_vs_train"]
    print(f"| real test digits (floor) | - | - | - | - | {floor['fid']:.2f} | - | {floor['kid_x1e3']:.1f} | "
          f"{floor['mode_entropy']:.3f} | {floor['mode_kl']:.4f} | - |")
    for key, r in results.items():
        if not isinstance(r, dict) or "scores" not in r:
            continue
        s, raw = r["scores"], r.get("raw_scores")
        print(f"| {key} | {r['train_s'] / 60:.1f} | {r['steps']:,} | {r['images_per_s']:.0f} | {r['precision']} | "
              f"{s['fid']:.2f} | {raw['fid'] if raw else float('nan'):.2f} | {s['kid_x1e3']:.1f} | "
              f"{s['mode_entropy']:.3f} | {s['mode_kl']:.4f} | {s['sample_s']:.1f} |")
    best = {k: r for k, r in results.items() if isinstance(r, dict) and "best_scores" in r}
    if best:
        print("\n| model | epochs | kept epoch | FID last epoch | FID kept epoch | proxy seconds / training |\n"
              "|---|---|---|---|---|---|")
        for key, r in best.items():
            print(f"| {key} | {r['epochs']} | {r['kept_epoch']} | {r['scores']['fid']:.2f} | "
                  f"{r['best_scores']['fid']:.2f} | {r['proxy_s'] / r['train_s']:.1%} |")
    conditional = {k: r for k, r in results.items() if isinstance(r, dict) and "conditional_accuracy" in
                   r.get("scores", {})}
    if conditional:
        print("\n| conditional model | conditional accuracy (EMA) | (raw) | mean per-class FID | FID |\n"
              "|---|---|---|---|---|")
        for key, r in conditional.items():
            s, raw = r["scores"], r.get("raw_scores", {})
            print(f"| {key} | {s['conditional_accuracy']:.3f} | {raw.get('conditional_accuracy', float('nan')):.3f} | "
                  f"{s['mean_class_fid']:.2f} | {s['fid']:.2f} |")
    for key, r in results.items():
        if isinstance(r, dict) and "guidance" in r:
            print(f"\n{key}: | guidance w | FID | conditional accuracy | mean per-class FID | KID x1e3 |\n"
                  "|---|---|---|---|---|")
            for scale, row in r["guidance"].items():
                print(f"| {scale} | {row['fid']:.2f} | {row['conditional_accuracy']:.3f} | "
                      f"{row['mean_class_fid']:.2f} | {row['kid_x1e3']:.1f} |")
    for key, r in results.items():
        if isinstance(r, dict) and "samplers" in r:
            print(f"\n{key}: | sampler | steps | s per 1,000 images | FID | KID x1e3 |\n|---|---|---|---|---|")
            for label, row in r["samplers"].items():
                print(f"| {label} | {row['steps']} | {row['s_per_1000_images']:.0f} | {row['fid']:.2f} | "
                      f"{row['kid_x1e3']:.1f} |")


if __name__ == "__main__":
    main()
