//! speech-detect's sample-rate converter, checked against tones computed
//! directly at the target rate.

use speech_detect::resample::Resampler;
use std::f64::consts::PI;

fn tone(frequency: f64, rate: usize, seconds: f64) -> Vec<f32> {
    let samples = (rate as f64 * seconds) as usize;
    (0..samples).map(|n| (2.0 * PI * frequency * n as f64 / rate as f64).sin() as f32).collect()
}

/// Root-mean-square error of `actual` against `expected`, relative to the
/// RMS of `expected`, over the middle of the signal (the ends see the
/// silence the filter pads with).
fn relative_error(actual: &[f32], expected: &[f32]) -> f64 {
    let middle = expected.len() / 8..expected.len() * 7 / 8;
    let (mut error, mut power) = (0.0, 0.0);
    for n in middle {
        error += (f64::from(actual[n]) - f64::from(expected[n])).powi(2);
        power += f64::from(expected[n]).powi(2);
    }
    (error / power).sqrt()
}

fn rms(signal: &[f32]) -> f64 {
    let middle = &signal[signal.len() / 8..signal.len() * 7 / 8];
    (middle.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / middle.len() as f64).sqrt()
}

#[test]
fn speech_band_tones_keep_their_pitch_level_and_timing() {
    for (from, to) in [(22_050, 16_000), (44_100, 16_000), (48_000, 16_000), (8_000, 16_000)] {
        let resampler = Resampler::new(from, to);
        for frequency in [200.0, 1_000.0, 3_000.0] {
            let converted = resampler.apply(&tone(frequency, from, 1.0));
            let expected = tone(frequency, to, 1.0);
            assert_eq!(converted.len(), expected.len(), "{from} → {to} Hz: one second stays one second");
            let error = relative_error(&converted, &expected);
            assert!(error < 1e-3, "{frequency} Hz tone, {from} → {to} Hz: relative error {error:.2e}");
        }
    }
}

#[test]
fn tones_the_new_rate_cannot_hold_are_filtered_out() {
    // 9 kHz and 10 kHz lie above 16 kHz's Nyquist frequency: kept, they
    // would fold back into the speech band as 7 and 6 kHz.
    for (from, frequency) in [(22_050, 9_000.0), (44_100, 10_000.0), (48_000, 9_000.0)] {
        let converted = Resampler::new(from, 16_000).apply(&tone(frequency, from, 1.0));
        let level = rms(&converted) / std::f64::consts::FRAC_1_SQRT_2;
        assert!(level < 0.01, "{frequency} Hz from {from} Hz comes out at {level:.2e} of its level");
    }
}

#[test]
fn the_output_has_the_length_of_the_input_at_the_new_rate() {
    for (from, to, input, output) in [(22_050, 16_000, 131_895, 95_707), (48_000, 16_000, 10, 4), (8_000, 16_000, 3, 6)]
    {
        let converted = Resampler::new(from, to).apply(&vec![0.25; input]);
        assert_eq!(converted.len(), output, "{input} samples, {from} → {to} Hz");
    }
    // A steady level stays where it was.
    let converted = Resampler::new(22_050, 16_000).apply(&vec![0.25; 22_050]);
    assert!(converted[1_000..15_000].iter().all(|&s| (s - 0.25).abs() < 1e-5), "the level is kept");
    assert!(Resampler::new(22_050, 16_000).apply(&[]).is_empty());
}
