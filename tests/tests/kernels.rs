//! This project's kernels at every vector level, each against a reference
//! computed one value at a time in f64. A level this CPU lacks is reported
//! as ignored, with the features it needs: never run, never passed. An
//! AVX-512 machine runs all three levels; an AVX2 one, two.

use libtest_mimic::{Arguments, Failed, Trial};
use mantle::models::kernels::{self, Level};

/// One kernel's check at one level.
type Check = fn(Level) -> Result<(), Failed>;

fn main() {
    let arguments = Arguments::from_args();
    eprintln!("kernel levels on {}", kernels::cpu_description());
    let mut trials = Vec::new();
    for level in Level::ALL {
        let checks: [(&str, Check); 2] =
            [("convolution", convolution_keeps_the_contract), ("depthwise", depthwise_keeps_the_contract)];
        for (kernel, check) in checks {
            let name = if level.supported() {
                format!("{kernel}::{level}")
            } else {
                format!("{kernel}::{level} (skipped: this CPU lacks {})", level.features())
            };
            trials.push(Trial::test(name, move || check(level)).with_ignored_flag(!level.supported()));
        }
    }
    trials.push(Trial::test("convolution::refuses_slices_that_do_not_fit", refuses_slices_that_do_not_fit));
    libtest_mimic::run(&arguments, trials).exit();
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 25.0).collect()
}

fn close(got: f32, want: f32) -> bool {
    (got - want).abs() <= 1e-4 * want.abs().max(1.0)
}

/// Every panel width and block height, the partial vectors of channel
/// counts that are not a multiple of any width, short blocks of positions,
/// the clamp and the residual, against the op's definition.
fn convolution_keeps_the_contract(level: Level) -> Result<(), Failed> {
    for outputs in [1, 5, 8, 13, 16, 17, 24, 33, 40, 48, 64, 80, 96, 100, 112, 144] {
        for taps in [1, 3, 16, 27] {
            for positions in [1, 5, 6, 7, 12, 13, 25, 50] {
                for (clamp, with_residual) in [(None, false), (Some((0.0, 6.0)), false), (None, true)] {
                    let rows = values(positions * taps, 1);
                    let weights = values(outputs * taps, 2);
                    let bias = values(outputs, 3);
                    let residual = with_residual.then(|| values(positions * outputs, 4));
                    let len = positions * outputs;
                    let mut output = vec![f32::NAN; len + 17];
                    let case = format!(
                        "{level}: {outputs} outputs, {taps} taps, {positions} positions, clamp {clamp:?}, residual {with_residual}"
                    );
                    kernels::product_at(level, &rows, &weights, &bias, clamp, residual.as_deref(), &mut output[..len])
                        .map_err(|e| format!("{case}: {e}"))?;
                    for p in 0..positions {
                        for o in 0..outputs {
                            let mut sum = bias[o] as f64;
                            for t in 0..taps {
                                sum += rows[p * taps + t] as f64 * weights[o * taps + t] as f64;
                            }
                            let mut want = sum as f32;
                            if let Some((low, high)) = clamp {
                                want = want.max(low).min(high);
                            }
                            want += residual.as_ref().map_or(0.0, |r| r[p * outputs + o]);
                            let got = output[p * outputs + o];
                            if !close(got, want) {
                                return Err(format!("{case}: position {p} channel {o}: {got} != {want}").into());
                            }
                        }
                    }
                    if !output[len..].iter().all(|v| v.is_nan()) {
                        return Err(format!("{case}: wrote past the output").into());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whole vectors, pairs of them and a masked last vector of channels,
/// groups of four positions and single ones, strided inputs, a kernel read
/// through its tap indices, and rows of output with a gap between them
/// that must stay untouched.
fn depthwise_keeps_the_contract(level: Level) -> Result<(), Failed> {
    for channels in [1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 96, 100] {
        for taps in [1, 4, 9, 25] {
            for len in [0, 1, 3, 4, 5, 9, 17] {
                for stride in [1, 2] {
                    let in_stride = channels * stride;
                    let out_stride = channels + 3;
                    let offsets: Vec<isize> = (0..taps as isize).map(|t| t * channels as isize).collect();
                    // The kernel's rows in reverse, so that the indices matter.
                    let tap_indices: Vec<usize> = (0..taps).rev().collect();
                    let k_stride = channels + 1;
                    let input = values((len + taps + 1) * in_stride + channels, 5);
                    let kernel: Vec<f32> = (0..taps * k_stride).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
                    let bias: Vec<f32> = (0..channels).map(|c| c as f32 * 0.5 - 1.0).collect();
                    let mut output = vec![f32::NAN; len.max(1) * out_stride];
                    let case = format!("{level}: {channels} channels, {taps} taps, {len} positions, stride {stride}");
                    kernels::depthwise_at(
                        level,
                        &input,
                        &mut output,
                        &kernel,
                        &tap_indices,
                        &offsets,
                        &bias,
                        k_stride,
                        len,
                        in_stride,
                        out_stride,
                    )
                    .map_err(|e| format!("{case}: {e}"))?;
                    for i in 0..len {
                        for c in 0..channels {
                            let mut sum = bias[c] as f64;
                            for (&t, &o) in tap_indices.iter().zip(&offsets) {
                                sum += kernel[t * k_stride + c] as f64 * input[i * in_stride + o as usize + c] as f64;
                            }
                            let (got, want) = (output[i * out_stride + c], sum as f32);
                            if !close(got, want) {
                                return Err(format!("{case}: position {i} channel {c}: {got} != {want}").into());
                            }
                        }
                        if !output[i * out_stride + channels..(i + 1) * out_stride].iter().all(|v| v.is_nan()) {
                            return Err(format!("{case}: wrote past channel {channels} of position {i}").into());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn refuses_slices_that_do_not_fit() -> Result<(), Failed> {
    let level = Level::Portable;
    let (weights, bias) = (values(4 * 3, 1), values(4, 2));
    let rows = values(5 * 3, 3);
    let mut short = vec![0.0; 5 * 4 - 1];
    if kernels::product_at(level, &rows, &weights, &bias, None, None, &mut short).is_ok() {
        return Err("an output one value short was accepted".into());
    }
    let mut output = vec![0.0; 5 * 4];
    if kernels::product_at(level, &rows[1..], &weights, &bias, None, None, &mut output).is_ok() {
        return Err("rows that are not whole were accepted".into());
    }
    if kernels::product_at(level, &rows, &weights, &bias, None, Some(&output[1..]), &mut output.clone()).is_ok() {
        return Err("a residual one value short was accepted".into());
    }
    let input = values(10, 4);
    let mut out = vec![0.0; 8];
    let far = kernels::depthwise_at(level, &input, &mut out, &[1.0; 8], &[0], &[8], &[0.0; 4], 4, 1, 4, 4);
    if far.is_ok() {
        return Err("a tap reading past the input was accepted".into());
    }
    Ok(())
}
