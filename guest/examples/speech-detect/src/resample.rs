//! Sample-rate conversion by an exact rational ratio with a polyphase
//! windowed-sinc filter.
//!
//! Each output sample is a dot product of a fixed number of input samples
//! with one of `up` precomputed filter rows, so the work is a short, regular
//! loop that runs on 4-wide SIMD both natively and in WebAssembly. An
//! FFT-based resampler suits fixed ratios too, but its transform sizes come
//! from the rates (441 and 320 points for 22.05 → 16 kHz), and odd sizes run
//! mostly scalar in wasm: there it took 4.1 ms for six seconds of audio,
//! against 1.7 ms for this filter.

use wide::f32x4;

/// Filter taps per output sample when not decimating. Decimating widens the
/// filter in proportion, so that its transition band stays as narrow
/// relative to the output rate.
const BASE_TAPS: usize = 32;
/// Filter rows are built and read in blocks of this many taps.
const BLOCK: usize = 16;
/// The filter's cutoff as a fraction of the lower of the two Nyquist
/// frequencies: a little below it, so that little of the transition band
/// lies past it to fold back. Speech-band tones still pass unchanged (the
/// tests check up to 3 kHz for a 16 kHz output).
const CUTOFF: f64 = 0.92;

/// A converter from one sample rate to another.
pub struct Resampler {
    /// Output samples per `down` input samples, with `up / down` the ratio
    /// of the rates in lowest terms.
    up: usize,
    down: usize,
    taps: usize,
    /// `up` rows of `taps` coefficients: row `p` makes the outputs that fall
    /// `p / up` of an input sample after an input sample.
    rows: Vec<f32>,
}

impl Resampler {
    /// A converter from `from` Hz to `to` Hz. Both must be non-zero.
    pub fn new(from: usize, to: usize) -> Resampler {
        let divisor = gcd(from, to).max(1);
        let (up, down) = (to / divisor, from / divisor);
        let decimation = (from as f64 / to as f64).max(1.0);
        let taps = ((BASE_TAPS as f64 * decimation).ceil() as usize).next_multiple_of(BLOCK);
        // In cycles per input sample.
        let cutoff = 0.5 * CUTOFF / decimation;
        let mut rows = Vec::with_capacity(up * taps);
        for phase in 0..up {
            rows.extend(filter_row(taps, cutoff, phase as f64 / up as f64));
        }
        Resampler { up, down, taps, rows }
    }

    /// `input` at the new rate: `ceil(len × to / from)` samples, aligned with
    /// the input in time (the filter is symmetric, so it adds no delay).
    pub fn apply(&self, input: &[f32]) -> Vec<f32> {
        let outputs = (input.len() * self.up).div_ceil(self.down);
        // Silence on either side, so that every window lies in the buffer.
        let lead = self.taps / 2 - 1;
        let mut padded = vec![0.0f32; lead + input.len() + self.taps];
        padded[lead..lead + input.len()].copy_from_slice(input);

        let mut output = vec![0.0f32; outputs];
        // Outputs `first`, `first + up`, `first + 2up`... share a filter row
        // and lie `down` input samples apart: going through them row by row
        // keeps each row in cache.
        for first in 0..self.up.min(outputs) {
            let position = first * self.down;
            let (mut start, phase) = (position / self.up, position % self.up);
            let row = &self.rows[phase * self.taps..(phase + 1) * self.taps];
            for sample in output[first..].iter_mut().step_by(self.up) {
                *sample = dot(row, &padded[start..start + self.taps]);
                start += self.down;
            }
        }
        output
    }
}

/// One row of the filter: a Blackman-windowed sinc with `cutoff` (cycles
/// per input sample), sampled at the taps of an output that falls
/// `fraction` of a sample after the input sample it is centred on, and
/// scaled to a gain of exactly 1 at DC.
fn filter_row(taps: usize, cutoff: f64, fraction: f64) -> Vec<f32> {
    use std::f64::consts::PI;
    // Tap j lies `offset + j` input samples from the output instant.
    let offset = -((taps / 2 - 1) as f64) - fraction;
    // sin(2π·cutoff·t) and the window's cos(2π·(t + taps/2)/taps) advance by
    // a fixed angle per tap: rotate them instead of calling sin and cos for
    // every coefficient.
    let (sinc_step, window_step) = (2.0 * PI * cutoff, 2.0 * PI / taps as f64);
    let (step_sin, step_cos) = sinc_step.sin_cos();
    let (window_step_sin, window_step_cos) = window_step.sin_cos();
    let (mut sin, mut cos) = (sinc_step * offset).sin_cos();
    let (mut window_sin, mut window_cos) = (window_step * (offset + (taps / 2) as f64)).sin_cos();

    let mut row = Vec::with_capacity(taps);
    for j in 0..taps {
        let t = offset + j as f64;
        let sinc = if t.abs() < 1e-9 { sinc_step } else { sin / t };
        let window = 0.42 - 0.5 * window_cos + 0.08 * (2.0 * window_cos * window_cos - 1.0);
        row.push(sinc * window);
        (sin, cos) = (sin * step_cos + cos * step_sin, cos * step_cos - sin * step_sin);
        (window_sin, window_cos) = (
            window_sin * window_step_cos + window_cos * window_step_sin,
            window_cos * window_step_cos - window_sin * window_step_sin,
        );
    }
    let gain: f64 = row.iter().sum();
    row.into_iter().map(|c| (c / gain) as f32).collect()
}

/// The dot product of two slices of equal length, a multiple of [`BLOCK`].
/// Four accumulators of four lanes each: LLVM does not vectorize this
/// reduction on its own, since that would reorder float additions.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a_quads, _) = a.as_chunks::<4>();
    let (b_quads, _) = b.as_chunks::<4>();
    let mut sums = [f32x4::ZERO; 4];
    for (a_block, b_block) in a_quads.as_chunks::<4>().0.iter().zip(b_quads.as_chunks::<4>().0) {
        for lane in 0..4 {
            sums[lane] += f32x4::new(a_block[lane]) * f32x4::new(b_block[lane]);
        }
    }
    ((sums[0] + sums[1]) + (sums[2] + sums[3])).reduce_add()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
