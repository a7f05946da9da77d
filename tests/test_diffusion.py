"""trainers.diffusion: schedules, q(x_t | x_0) in closed form, the loss falls on real digits, the samplers."""
import json

import numpy as np
import pytest
import tensorflow as tf

from trainers import export
from tests.conftest import sample_digits
from trainers import diffusion, registry
from trainers.diffusion import DiffusionConfig, GaussianDiffusion, noise_schedule

# The GroupNorm U-Net with attention (`ddpm_unet`), epsilon-prediction, float32; the default compact U-Net with
# v-prediction and min-SNR weighting is test_v_prediction_with_min_snr_weighting_learns_too's.
TINY = dict(architecture="unet", timesteps=40, base_channels=16, channel_multipliers=(1, 2), attention=True,
            sample_steps=10, batch_size=32, learning_rate=2e-3, prediction="epsilon", loss_weighting="uniform",
            precision="float32")


@pytest.fixture(scope="module")
def trained():
    """A tiny DDPM trained on 640 real digits in [-1, 1] (the Transform's range for DDPM), 60 steps."""
    images = sample_digits(640) * 2.0 - 1.0
    config = DiffusionConfig(epochs=3, **TINY)
    dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(640, seed=0).batch(32)
    model, history = diffusion.train(config, (28, 28, 1), dataset)
    return model, history, images


@pytest.mark.parametrize("overrides, message", [
    ({"schedule": "quadratic"}, "schedule='quadratic'"),
    ({"timesteps": 1}, "timesteps=1"),
    ({"sample_steps": 2000}, "sample_steps=2000"),
    ({"architecture": "unet", "base_channels": 12}, "base_channels=12"),
    ({"eta": 1.5}, "eta=1.5"),
    ({"prediction": "x0"}, "prediction='x0'"),
    ({"loss_weighting": "p2"}, "loss_weighting='p2'"),
    ({"min_snr_gamma": 0}, "min_snr_gamma=0"),
    ({"sampler": "euler"}, "sampler='euler'"),
    ({"sample_spacing": "log"}, "sample_spacing='log'"),
    ({"sampler": "dpm_solver", "eta": 0.5}, "eta=0.5: sampler=dpm_solver is deterministic"),
])
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(**overrides)


def test_images_that_cannot_be_halved_enough_are_rejected():
    with pytest.raises(ValueError, match="cannot be halved 2 times"):
        diffusion.build_diffusion_model(DiffusionConfig(architecture="unet"), (30, 30, 1))


def test_schedules_destroy_the_signal_gradually():
    for name in ("cosine", "linear"):
        betas = noise_schedule(name, 1000)
        alpha_bar = np.cumprod(1 - betas)
        assert betas.shape == (1000,) and np.all(betas > 0) and np.all(betas <= 0.999)
        assert np.all(np.diff(alpha_bar) < 0) and alpha_bar[0] > 0.99 and alpha_bar[-1] < 1e-3
    # Improved DDPM's point: the cosine schedule keeps more signal through the middle of the process.
    cosine, linear = (np.cumprod(1 - noise_schedule(n, 1000)) for n in ("cosine", "linear"))
    assert cosine[500] > 2 * linear[500]
    # The linear schedule rescales with T so that the whole process adds the same noise.
    assert abs(np.cumprod(1 - noise_schedule("linear", 250))[-1] - linear[-1]) < 1e-3


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_q_sample_matches_the_closed_form_mean_and_variance(schedule):
    process = GaussianDiffusion(noise_schedule(schedule, 1000))
    x0 = tf.constant(sample_digits(3) * 2.0 - 1.0)
    draws = 4000
    for step in (0, 250, 999):
        t = tf.fill([3 * draws], step)
        repeated = tf.repeat(x0, draws, axis=0)
        samples = process.q_sample(repeated, t, tf.random.stateless_normal(repeated.shape, seed=[step, 1]))
        samples = tf.reshape(samples, [3, draws, 28, 28, 1]).numpy()
        alpha_bar = float(process.alphas_cumprod[step])
        expected_mean, _ = process.q_mean_variance(x0, tf.fill([3], step))
        np.testing.assert_allclose(expected_mean.numpy(), np.sqrt(alpha_bar) * x0.numpy(), rtol=1e-5, atol=1e-6)
        std_error = np.sqrt((1 - alpha_bar) / draws)
        assert np.abs(samples.mean(axis=1) - expected_mean.numpy()).max() < 5 * std_error + 1e-6
        np.testing.assert_allclose(samples.var(axis=1).mean(), 1 - alpha_bar, rtol=0.02, atol=1e-6)


def test_ddim_at_eta_one_is_the_ancestral_posterior_step():
    """DDIM's update with eta=1 between consecutive steps equals sampling q(x_{t-1} | x_t, x0_hat)."""
    process = GaussianDiffusion(noise_schedule("cosine", 100))
    network = lambda inputs, training: tf.sin(3.0 * inputs[0])  # any noise prediction will do
    x = tf.random.stateless_normal([2, 8, 8, 1], seed=[1, 2])
    noise = tf.random.stateless_normal([2, 8, 8, 1], seed=[3, 4])
    t = tf.constant(60)
    stepped = process.ddim_step(network, x, t, t - 1, 1.0, noise)
    alpha_bar = process.alphas_cumprod[60]
    x0 = tf.clip_by_value((x - tf.sqrt(1 - alpha_bar) * network([x], False)) / tf.sqrt(alpha_bar), -1, 1)
    mean, variance = process.q_posterior_mean_variance(x0, x, tf.fill([2], 60))
    np.testing.assert_allclose(stepped.numpy(), (mean + tf.sqrt(variance) * noise).numpy(), atol=1e-4)


def gaussian_data_denoiser(process, scale):
    """The exact denoiser for data ~ N(0, scale^2 I): E[x_0 | x_t] = sqrt(a) s^2 / (a s^2 + 1 - a) x_t, given
    as the network output `process.prediction` asks for."""
    def network(inputs, training):
        x, t = inputs
        a = tf.reshape(tf.gather(process.alphas_cumprod, t), [-1, 1, 1, 1])
        x0 = tf.sqrt(a) * scale ** 2 / (a * scale ** 2 + 1.0 - a) * x
        eps = (x - tf.sqrt(a) * x0) / tf.sqrt(1.0 - a)
        return tf.sqrt(a) * eps - tf.sqrt(1.0 - a) * x0 if process.prediction == "v" else eps
    return network


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_dpm_solver_follows_the_probability_flow_to_second_order(prediction):
    """Gaussian data has a closed-form probability-flow ODE: x_t = sqrt(a_t s^2 + 1 - a_t) z, so the sampler's
    exact answer from x_T is E[x_0 | x_{t=0}] on that path. DDIM is its first-order solver, DPM-Solver++(2M)
    its second-order one: on quadratic spacing it lands far closer at equal network evaluations, and doubling
    its steps cuts its error more than fourfold. On uniform spacing its first step, out of the cosine schedule's
    near-pure-noise last interval, spoils the multistep extrapolation: why quadratic spacing exists."""
    process, scale = GaussianDiffusion(noise_schedule("cosine", 1000), prediction=prediction), 0.5
    network = gaussian_data_denoiser(process, scale)
    x_end = tf.reshape(tf.linspace(-1.5, 1.5, 64), [1, 8, 8, 1])
    a_end, a_0 = process.alphas_cumprod[-1], process.alphas_cumprod[0]
    z = x_end / tf.sqrt(a_end * scale ** 2 + 1.0 - a_end)
    exact = (tf.sqrt(a_0) * scale ** 2 / tf.sqrt(a_0 * scale ** 2 + 1.0 - a_0) * z).numpy()

    def error(sampler, steps, spacing="quadratic"):
        return np.abs(process.denoise(network, x_end, 0, steps, 0.0, sampler, spacing).numpy() - exact).max()

    for steps in (5, 10, 20):
        assert error("dpm_solver", steps) < error("ddim", steps) / 2
    assert error("dpm_solver", 20) < error("dpm_solver", 10) / 4 and error("dpm_solver", 10) < 0.05
    assert error("ddim", 20) < error("ddim", 10) < error("ddim", 5)
    assert error("dpm_solver", 10, "uniform") > 3 * error("dpm_solver", 10)
    with pytest.raises(ValueError, match="sampler='euler'"):
        process.denoise(network, x_end, 0, 5, 0.0, "euler")


def test_quadratic_spacing_runs_from_the_last_step_to_the_first():
    process = GaussianDiffusion(noise_schedule("cosine", 1000))
    for spacing in ("uniform", "quadratic"):
        times = process.sample_times(10, spacing).numpy()
        assert times[0] == 999 and times[-1] == 0 and np.all(np.diff(times) < 0)
    quadratic = process.sample_times(10, "quadratic").numpy()
    assert quadratic[-2] < 20 and quadratic[1] > 700  # dense at low noise, sparse at high noise
    with pytest.raises(ValueError, match="spacing='log'"):
        process.sample_times(10, "log")


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_the_true_target_gives_back_x0_under_either_parameterisation(prediction):
    process = GaussianDiffusion(noise_schedule("cosine", 100), prediction=prediction)
    x0 = tf.constant(sample_digits(4) * 2.0 - 1.0)
    noise = tf.random.stateless_normal(x0.shape, seed=[1, 2])
    t = tf.constant([1, 30, 70, 99])
    xt = process.q_sample(x0, t, noise)
    target = process.target(x0, t, noise)
    np.testing.assert_allclose(process.predicted_x0(target, xt, t).numpy(), x0.numpy(), atol=2e-3)
    if prediction == "v":  # v = sqrt(a) eps - sqrt(1 - a) x_0
        a = process.alphas_cumprod.numpy()[t.numpy()][:, None, None, None]
        np.testing.assert_allclose(target.numpy(), np.sqrt(a) * noise.numpy() - np.sqrt(1 - a) * x0.numpy(),
                                   atol=1e-5)


def test_min_snr_weights_cap_the_easy_low_noise_steps():
    t = tf.constant([0, 500, 999])
    for prediction, denominator in (("epsilon", lambda snr: snr), ("v", lambda snr: snr + 1)):
        process = GaussianDiffusion(noise_schedule("cosine", 1000), prediction=prediction)
        snr = process.alphas_cumprod.numpy() / (1 - process.alphas_cumprod.numpy())
        expected = np.minimum(snr[t.numpy()], 5.0) / denominator(snr[t.numpy()])
        np.testing.assert_allclose(process.loss_weight(t, "min_snr", 5.0).numpy(), expected, rtol=1e-3)
        np.testing.assert_array_equal(process.loss_weight(t, "uniform", 5.0).numpy(), [1, 1, 1])
    # t = 0 is nearly noise-free (SNR ~ 1.6e5): its weight is tiny; the noisiest step keeps weight ~1 (eps).
    weights = GaussianDiffusion(noise_schedule("cosine", 1000)).loss_weight(t, "min_snr", 5.0).numpy()
    assert weights[0] < 1e-3 and weights[2] == pytest.approx(1.0)


def test_v_prediction_with_min_snr_weighting_learns_too():
    images = sample_digits(320) * 2.0 - 1.0
    config = DiffusionConfig(**{**TINY, "epochs": 3, "prediction": "v", "loss_weighting": "min_snr",
                                "architecture": "compact", "base_channels": 8})
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(32)
    model, history = diffusion.train(config, (28, 28, 1), dataset)
    assert history["loss"][-1] < 0.7 * history["loss"][0], history["loss"]
    samples = model.generate(4, seed=1).numpy()
    assert samples.shape == (4, 28, 28, 1) and np.isfinite(samples).all()


def test_training_lowers_the_noise_prediction_loss(trained):
    _, history, _ = trained
    assert history["loss"][-1] < 0.7 * history["loss"][0], history["loss"]


def test_samplers_give_images_of_the_right_shape_and_range(trained):
    model, _, images = trained
    ddim = model.generate(6, seed=5).numpy()
    assert ddim.shape == (6, 28, 28, 1) and ddim.min() >= -1 and ddim.max() <= 1
    np.testing.assert_array_equal(ddim, model.generate(6, seed=5).numpy())  # every draw is seeded (eta 1 too)
    assert not np.allclose(ddim, model.generate(6, seed=6).numpy())
    assert model.generate(6, seed=5, steps=3).shape == (6, 28, 28, 1)
    ancestral = model.ancestral_sample(6, seed=5).numpy()
    assert ancestral.shape == (6, 28, 28, 1) and ancestral.min() >= -1 and ancestral.max() <= 1
    # Mostly background, like the digits: far from the uniform noise the sampler starts from.
    assert abs(np.median(ancestral) - np.median(images)) < 0.5
    with pytest.raises(ValueError, match="steps=41"):
        model.generate(2, steps=41)
    # DPM-Solver on quadratic spacing: deterministic, and from the same noise close to deterministic DDIM's
    # images (both solve the same probability-flow ODE), far closer than another seed's.
    solver = model.generate(6, seed=5, sampler="dpm_solver", spacing="quadratic").numpy()
    assert solver.shape == (6, 28, 28, 1) and solver.min() >= -1 and solver.max() <= 1
    np.testing.assert_array_equal(solver, model.generate(6, seed=5, sampler="dpm_solver", spacing="quadratic"))
    ode, other = (model.generate(6, seed=seed, eta=0.0).numpy() for seed in (5, 6))
    assert np.abs(solver - ode).mean() < 0.5 * np.abs(ode - other).mean()


def test_a_dpm_solver_model_serves_its_own_sampler(tmp_path):
    """The SavedModel's generate runs the configured sampler and spacing (DPM-Solver's three-variable loop
    included), as the model itself does, and its metadata names them."""
    config = registry.make_config("ddpm", {"timesteps": 20, "sample_steps": 4, "base_channels": 8,
                                           "channel_multipliers": (1, 2), "precision": "float32",
                                           "sampler": "dpm_solver", "sample_spacing": "quadratic", "eta": 0.0})
    entry = registry.get_model("ddpm")
    model = entry.build(config, (28, 28, 1))
    export.export_model(entry.family, model, (28, 28, 1), str(tmp_path), entry.pixel_range)
    loaded = tf.saved_model.load(str(tmp_path))
    served = loaded.signatures["generate"](n=tf.constant(2), seed=tf.constant(7), steps=tf.constant(4))["images"]
    np.testing.assert_allclose(served.numpy(), (model.generate(2, seed=7).numpy() + 1) / 2, atol=1e-5)
    assert not np.allclose(served.numpy(), (model.generate(2, seed=7, sampler="ddim").numpy() + 1) / 2, atol=1e-3)
    metadata = json.loads(loaded.metadata.numpy().decode())
    assert (metadata["sampler"], metadata["sample_spacing"]) == ("dpm_solver", "quadratic")
