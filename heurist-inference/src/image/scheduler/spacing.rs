//! Where `set_timesteps(n)` puts the inference timesteps (diffusers' `timestep_spacing`), and the
//! sigma table of the Euler schedulers, with numpy's arithmetic: `linspace` and `arange` in f64,
//! `round` half to even, `interp` between the f32 training sigmas.
//!
//! Shared by the Euler schedulers (fractional f32 timesteps) and DDIM (integer timesteps, the
//! same values rounded).

use super::{SchedulerConfig, TimestepSpacing};

/// The timesteps from the noisiest, before any rounding the caller applies: "linspace" gives
/// numpy's `linspace(0, T - 1, n)` (fractional), the others whole numbers.
///
/// "trailing" is numpy's `arange(T, 0, -T / n)`, whose length is `ceil(T / (T / n))` in f64:
/// `n + 1` for a few `n` (61 is the first for T = 1000), which diffusers keeps, and so does this.
pub(super) fn spaced_timesteps(config: &SchedulerConfig, n: usize) -> Vec<f64> {
    let train = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            let stop = (train - 1) as f64;
            let step = if n > 1 { stop / (n - 1) as f64 } else { 0.0 };
            (0..n)
                .rev()
                .map(|i| {
                    if n > 1 && i == n - 1 {
                        stop
                    } else {
                        i as f64 * step
                    }
                })
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let start = train as f64;
            let step = -(start / n as f64);
            let len = ((0.0 - start) / step).ceil() as usize;
            // numpy's fill: the first two values, then start + i * (second - first).
            let delta = (start + step) - start;
            (0..len)
                .map(|i| match i {
                    0 => start,
                    1 => start + step,
                    _ => start + i as f64 * delta,
                })
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// numpy's `interp(t, arange(len(table)), table)` in f64: the end values outside the table,
/// the table value at whole points, linear in between.
pub(super) fn interp(t: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if t.is_nan() {
        return f64::NAN;
    }
    if t <= 0.0 {
        return f64::from(table[0]);
    }
    if t >= last as f64 {
        return f64::from(table[last]);
    }
    let j = t.floor() as usize;
    let low = f64::from(table[j]);
    if t == j as f64 {
        return low;
    }
    let slope = f64::from(table[j + 1]) - low;
    slope * (t - j as f64) + low
}

/// The Euler schedulers' `set_timesteps(n)`: f32 timesteps and the sigmas interpolated at them,
/// stored in f32, with the final 0.
pub(super) fn euler_schedule(config: &SchedulerConfig, n: usize) -> (Vec<f32>, Vec<f32>) {
    let train = config.train_sigmas();
    // diffusers casts the timesteps to f32 and adds the offset there; np.interp then reads the
    // f32 values widened to f64.
    let timesteps: Vec<f32> = spaced_timesteps(config, n)
        .into_iter()
        .map(|t| t as f32)
        .collect();
    let mut sigmas: Vec<f32> = timesteps
        .iter()
        .map(|&t| interp(f64::from(t), &train) as f32)
        .collect();
    sigmas.push(0.0);
    (timesteps, sigmas)
}

/// The Euler schedulers' `init_noise_sigma`: the largest sigma for "linspace" and "trailing",
/// `sqrt(max^2 + 1)` for "leading", in f32.
pub(super) fn euler_init_noise_sigma(config: &SchedulerConfig, sigmas: &[f32]) -> f32 {
    let max_sigma = sigmas.iter().copied().fold(0.0f32, f32::max);
    match config.timestep_spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    }
}
