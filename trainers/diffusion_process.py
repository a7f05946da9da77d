"""The diffusion process, apart from any network: the noise schedule as plain data (improved-diffusion's layout),
the forward process q and the reverse steps of the samplers (DDIM with eta, DDPM's ancestral step, DPM-Solver++(2M)),
in float64 maths stored as float32. The network is an argument: trainers/diffusion.py's model passes its own."""
import math
from typing import Tuple

import numpy as np
import tensorflow as tf

from trainers.common import run_network

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("epsilon", "v")  # what the network outputs: the noise, or v = sqrt(a) eps - sqrt(1 - a) x_0
SAMPLERS = ("ddim", "dpm_solver")  # DDIM (eta: its noise) or DPM-Solver++(2M), deterministic, second order
SPACINGS = ("uniform", "quadratic")  # the sampler's time steps: evenly spaced in t or in sqrt(t)


def noise_schedule(name: str, timesteps: int, cosine_offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """betas (T,) float64. cosine: Improved DDPM's alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas
    clipped at max_beta; linear: DDPM's 1e-4 .. 0.02, rescaled so that any T gives the same total noise."""
    if name == "cosine":
        alpha_bar = lambda t: math.cos((t / timesteps + cosine_offset) / (1 + cosine_offset) * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar(i + 1) / alpha_bar(i), max_beta) for i in range(timesteps)])
    if name == "linear":
        scale = 1000 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    raise ValueError(f"schedule={name!r}: must be one of {SCHEDULES}")


class GaussianDiffusion:
    """The forward process q and the reverse steps, for a noise schedule betas (T,) and a network that predicts
    `prediction` ("epsilon": the noise; "v": v = sqrt(a_t) eps - sqrt(1 - a_t) x_0, Salimans & Ho 2022)."""

    def __init__(self, betas: np.ndarray, prediction: str = "epsilon"):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}: must be one of {PREDICTIONS}")
        self.prediction = prediction
        betas = np.asarray(betas, np.float64)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.timesteps = len(betas)
        as32 = lambda a: tf.constant(a, tf.float32)
        self.betas, self.alphas_cumprod = as32(betas), as32(alphas_cumprod)
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = (as32(np.sqrt(alphas_cumprod)),
                                                                       as32(np.sqrt(1.0 - alphas_cumprod)))
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, beta~_t)
        self.posterior_variance = as32(betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_coef_x0 = as32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_coef_xt = as32((1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod))
        self.snr = as32(alphas_cumprod / (1.0 - alphas_cumprod))

    @staticmethod
    def _at(values: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        """values[t] shaped (B, 1, 1, 1) to broadcast over images."""
        return tf.reshape(tf.gather(values, t), [-1, 1, 1, 1])

    def q_mean_variance(self, x0: tf.Tensor, t: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Mean (B, H, W, C) and variance (B, 1, 1, 1) of q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)."""
        return self._at(self.sqrt_alphas_cumprod, t) * x0, 1.0 - self._at(self.alphas_cumprod, t)

    def q_sample(self, x0: tf.Tensor, t: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        """x_t for x_0 (B, H, W, C), t (B,) int, noise ~ N(0, I): one draw from q(x_t | x_0)."""
        return self._at(self.sqrt_alphas_cumprod, t) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def target(self, x0: tf.Tensor, t: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        """What the network is trained to output for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "v":
            return self._at(self.sqrt_alphas_cumprod, t) * noise - self._at(self.sqrt_one_minus_alphas_cumprod, t) * x0
        return noise

    def loss_weight(self, t: tf.Tensor, weighting: str, gamma: float) -> tf.Tensor:
        """Per-example weights (B,) of the regression loss: 1, or min-SNR-gamma (Hang et al. 2023), which for
        a network predicting eps is min(SNR, gamma) / SNR and for one predicting v is min(SNR, gamma) / (SNR + 1):
        the easy low-noise steps stop dominating the gradient."""
        if weighting == "uniform":
            return tf.ones_like(t, tf.float32)
        snr = tf.gather(self.snr, t)
        return tf.minimum(snr, gamma) / (snr + 1.0 if self.prediction == "v" else snr)

    def predicted_x0(self, output: tf.Tensor, xt: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        """x_0 implied by the network's output at x_t (t (B,))."""
        signal, noise = self._at(self.sqrt_alphas_cumprod, t), self._at(self.sqrt_one_minus_alphas_cumprod, t)
        if self.prediction == "v":
            return signal * xt - noise * output
        return (xt - noise * output) / signal

    def q_posterior_mean_variance(self, x0, xt, t) -> Tuple[tf.Tensor, tf.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0), the target of DDPM's ancestral step."""
        mean = self._at(self.posterior_coef_x0, t) * x0 + self._at(self.posterior_coef_xt, t) * xt
        return mean, self._at(self.posterior_variance, t)

    def ddim_step(self, network, x, t, t_prev, eta, noise):
        """One reverse step from time t to t_prev (-1: the end) for x (B, H, W, C); t, t_prev int scalars."""
        batch = tf.shape(x)[0]
        alpha_bar = tf.gather(self.alphas_cumprod, t)
        alpha_bar_prev = tf.where(t_prev >= 0, tf.gather(self.alphas_cumprod, tf.maximum(t_prev, 0)), 1.0)
        times = tf.fill([batch], t)
        output = tf.cast(run_network(network, [x, times], training=False), tf.float32)
        x0 = tf.clip_by_value(self.predicted_x0(output, x, times), -1.0, 1.0)
        eps = (x - tf.sqrt(alpha_bar) * x0) / tf.sqrt(1.0 - alpha_bar)  # consistent with the clipped x0
        sigma = eta * tf.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
        direction = tf.sqrt(tf.maximum(1.0 - alpha_bar_prev - tf.square(sigma), 0.0)) * eps
        return tf.sqrt(alpha_bar_prev) * x0 + direction + sigma * noise

    def dpm_solver_step(self, network, x, t, t_prev, x0_last, h_last):
        """One DPM-Solver++(2M) step (Lu et al. 2022, multistep, data prediction) from time t to t_prev (-1: the
        end) for x (B, H, W, C): the exponential integrator in lambda = log(alpha / sigma), second order from the
        previous step's x0 prediction `x0_last` and log-SNR step `h_last` (h_last = 0: the first step, first
        order). Returns (x at t_prev, this step's x0, this step's h). The last step (to sigma = 0) is first order,
        which is the clipped x0 prediction itself."""
        batch = tf.shape(x)[0]
        alpha_bar = tf.gather(self.alphas_cumprod, t)
        # A stand-in for the end's alpha_bar = 1 (lambda = inf) so the untaken branch below stays finite.
        alpha_bar_prev = tf.gather(self.alphas_cumprod, tf.maximum(t_prev, 0))
        output = tf.cast(run_network(network, [x, tf.fill([batch], t)], training=False), tf.float32)
        x0 = tf.clip_by_value(self.predicted_x0(output, x, tf.fill([batch], t)), -1.0, 1.0)
        log_snr = lambda a: 0.5 * (tf.math.log(a) - tf.math.log(1.0 - a))  # lambda_t = log(alpha_t / sigma_t)
        h = log_snr(alpha_bar_prev) - log_snr(alpha_bar)
        ratio = h_last / tf.maximum(h, 1e-12)  # r = h_{i-1} / h_i
        second_order = tf.where(h_last > 0.0, 1.0 / (2.0 * tf.maximum(ratio, 1e-12)), 0.0)
        x0_combined = (1.0 + second_order) * x0 - second_order * x0_last
        step = (tf.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)) * x
                - tf.sqrt(alpha_bar_prev) * tf.math.expm1(-h) * x0_combined)
        return tf.where(t_prev >= 0, step, x0), x0, h

    def sample(self, network, shape, seed, steps, eta, sampler="ddim", spacing="uniform"):
        """Images of `shape` (n, H, W, C) in [-1, 1] after `steps` reverse steps spread evenly over [T-1, 0].

        Every random draw is stateless from (seed, step), so one seed gives one result in eager and graph mode.
        """
        return self.denoise(network, tf.random.stateless_normal(shape, seed=[seed, 0]), seed, steps, eta, sampler,
                            spacing)

    def sample_times(self, steps, spacing="uniform") -> tf.Tensor:
        """The `steps` time steps (steps,) int32 a sampler visits, from T-1 down to 0: evenly spaced in t, or in
        sqrt(t) ("quadratic", DDIM's CIFAR-10 choice), which spends the steps where the noise is low and the
        details form, and keeps the first step away from the cosine schedule's last, near-pure-noise interval
        (alpha_bar 1e-9 at t = T-1), which multistep solvers extrapolate badly from. At many steps quadratic
        spacing repeats t = 0 or 1; a repeated step leaves x as it is."""
        if spacing not in SPACINGS:
            raise ValueError(f"spacing={spacing!r}: must be one of {SPACINGS}")
        if spacing == "quadratic":
            return tf.cast(tf.round(tf.square(tf.linspace(math.sqrt(self.timesteps - 1), 0.0, steps))), tf.int32)
        return tf.cast(tf.round(tf.linspace(float(self.timesteps - 1), 0.0, steps)), tf.int32)

    def denoise(self, network, x, seed, steps, eta, sampler="ddim", spacing="uniform"):
        """`sample` from the given x_T (B, H, W, C) instead of drawn noise: with eta=0 (or DPM-Solver) a
        deterministic map. `sampler` and `spacing` are Python strings (each pair traces its own graph): "ddim"
        or "dpm_solver"; see `sample_times`."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: must be one of {SAMPLERS}")
        shape = tf.shape(x)
        times = self.sample_times(steps, spacing)
        prev_times = tf.concat([times[1:], [-1]], axis=0)
        if sampler == "dpm_solver":
            x0_last, h_last = tf.zeros_like(x), tf.constant(0.0)
            for i in tf.range(steps):
                x, x0_last, h_last = self.dpm_solver_step(network, x, times[i], prev_times[i], x0_last, h_last)
            return tf.clip_by_value(x, -1.0, 1.0)
        for i in tf.range(steps):
            noise = tf.random.stateless_normal(shape, seed=[seed, i + 1])
            x = self.ddim_step(network, x, times[i], prev_times[i], eta, noise)
        return tf.clip_by_value(x, -1.0, 1.0)
