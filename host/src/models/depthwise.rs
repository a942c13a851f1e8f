//! A channel-last depthwise convolution kernel for x86-64 with AVX2 and FMA,
//! registered with tract as its `DepthwiseC` routine.
//!
//! tract runs a depthwise convolution laid out channel-last by walking each
//! output row and handing a run of output positions to the best `DepthwiseC`
//! kernel the machine has. tract 0.23 ships one for aarch64 and wasm only, so
//! on x86-64 it falls back to a scalar loop: 6.7 of EfficientNet-Lite0's
//! 22 ms (docs/PERF-LOG.md). This kernel keeps four output positions by
//! sixteen channels in registers, so each tap's weights are loaded once for
//! four positions.
//!
//! It sums with fused multiply-adds, so results may differ from tract's
//! scalar loop in the last bit; both are within the tolerance the reference
//! tests hold models to.

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::x86_64::*;

    use tract_onnx::tract_core::tract_linalg::isa::{Arch, Isa, IsaReq};
    use tract_onnx::tract_core::tract_linalg::routines::{Func, Routine, RoutineFactory};

    /// The name tract's routine table knows this kernel by.
    pub const NAME: &str = "mantle_avx2_fma_depthwise_c_f32";

    inventory::submit! {
        Routine {
            func: Func::DepthwiseC,
            arch: Some(Arch::X86_64),
            isa: IsaReq::ANY.needing(&[Isa::X86_64Avx2, Isa::X86_64Fma]),
            boost: 0,
            round_trip: false,
            factory: RoutineFactory::DepthwiseCF32 { name: NAME, run: depthwise_c_f32 },
        }
    }

    /// `len` output positions, each `channels` contiguous values: position
    /// `i`, channel `c` is `bias[c]` plus, for every tap `t`,
    /// `kernel[tap_indices[t] * k_stride + c] * input[i * in_stride + offsets[t] + c]`.
    ///
    /// # Safety
    /// tract's `DepthwiseCF32` contract: every input and kernel value named
    /// above readable, `channels` values readable from `bias`, and `channels`
    /// values writable from `output + i * out_stride` for each `i < len`.
    /// tract only calls it on a machine with AVX2 and FMA, which the routine
    /// declares.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn depthwise_c_f32(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &[usize],
        offsets: &[isize],
        bias: *const f32,
        channels: usize,
        k_stride: usize,
        len: usize,
        in_stride: isize,
        out_stride: isize,
    ) {
        let run = Run { input, output, kernel, tap_indices, offsets, bias, k_stride, in_stride, out_stride };
        unsafe { run.all(channels, len) }
    }

    /// One kernel call's arguments, shared by the blocks it is cut into.
    struct Run<'a> {
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &'a [usize],
        offsets: &'a [isize],
        bias: *const f32,
        k_stride: usize,
        in_stride: isize,
        out_stride: isize,
    }

    impl Run<'_> {
        /// Cuts the channels into blocks of 16 and 8, with a scalar tail,
        /// and the positions into groups of four, with single ones left.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn all(&self, channels: usize, len: usize) {
            unsafe {
                let mut c = 0;
                while c + 16 <= channels {
                    self.positions::<2>(c, len);
                    c += 16;
                }
                if c + 8 <= channels {
                    self.positions::<1>(c, len);
                    c += 8;
                }
                for c in c..channels {
                    self.scalar_channel(c, len);
                }
            }
        }

        /// `V` vectors of 8 channels from `c`, over all positions.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn positions<const V: usize>(&self, c: usize, len: usize) {
            unsafe {
                let mut i = 0;
                while i + 4 <= len {
                    self.block::<4, V>(c, i);
                    i += 4;
                }
                while i < len {
                    self.block::<1, V>(c, i);
                    i += 1;
                }
            }
        }

        /// `P` positions from `i` by `V` vectors of channels from `c`, all
        /// held in registers across the taps.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn block<const P: usize, const V: usize>(&self, c: usize, i: usize) {
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); V]; P];
                for v in 0..V {
                    let b = _mm256_loadu_ps(self.bias.add(c + 8 * v));
                    for row in acc.iter_mut() {
                        row[v] = b;
                    }
                }
                let first = self.input.offset(i as isize * self.in_stride).add(c);
                for (&tap, &offset) in self.tap_indices.iter().zip(self.offsets) {
                    let k = self.kernel.add(tap * self.k_stride + c);
                    let mut weights = [_mm256_setzero_ps(); V];
                    for (v, w) in weights.iter_mut().enumerate() {
                        *w = _mm256_loadu_ps(k.add(8 * v));
                    }
                    let x = first.offset(offset);
                    for (p, row) in acc.iter_mut().enumerate() {
                        let x = x.offset(p as isize * self.in_stride);
                        for (v, a) in row.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8 * v)), weights[v], *a);
                        }
                    }
                }
                for (p, row) in acc.iter().enumerate() {
                    let out = self.output.offset((i + p) as isize * self.out_stride).add(c);
                    for (v, a) in row.iter().enumerate() {
                        _mm256_storeu_ps(out.add(8 * v), *a);
                    }
                }
            }
        }

        /// One channel over all positions, for the channels past the last
        /// block of 8.
        unsafe fn scalar_channel(&self, c: usize, len: usize) {
            unsafe {
                for i in 0..len as isize {
                    let x = self.input.offset(i * self.in_stride).add(c);
                    let mut sum = *self.bias.add(c);
                    for (&tap, &offset) in self.tap_indices.iter().zip(self.offsets) {
                        sum += *self.kernel.add(tap * self.k_stride + c) * *x.offset(offset);
                    }
                    *self.output.offset(i * self.out_stride).add(c) = sum;
                }
            }
        }
    }
}

/// The name of the channel-last depthwise kernel tract runs on this
/// machine, if it has one: what the load log reports, and how a test shows
/// that this project's kernel is the one in use.
pub fn channel_last_kernel() -> Option<&'static str> {
    use tract_onnx::tract_core::tract_linalg::{isa, routines};
    routines::best_for(routines::Func::DepthwiseC, tract_onnx::prelude::DatumType::F32, &isa::native())
        .map(|routine| routine.name())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::x86_64::depthwise_c_f32;

    /// The contract, computed one value at a time.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        input: &[f32],
        kernel: &[f32],
        taps: &[usize],
        offsets: &[isize],
        bias: &[f32],
        k_stride: usize,
        len: usize,
        in_stride: usize,
        out_stride: usize,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; len.max(1) * out_stride];
        for i in 0..len {
            for c in 0..bias.len() {
                let mut sum = bias[c] as f64;
                for (&t, &o) in taps.iter().zip(offsets) {
                    let x = input[i * in_stride + o as usize + c];
                    sum += kernel[t * k_stride + c] as f64 * x as f64;
                }
                out[i * out_stride + c] = sum as f32;
            }
        }
        out
    }

    #[test]
    fn matches_the_contract_for_every_block_and_tail() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        for channels in [1, 7, 8, 9, 16, 24, 31, 32, 96, 100] {
            for taps in [1, 4, 9, 25] {
                for len in [0, 1, 3, 4, 5, 9, 17] {
                    for stride in [1, 2] {
                        check(channels, taps, len, stride);
                    }
                }
            }
        }
    }

    fn check(channels: usize, taps: usize, len: usize, stride: usize) {
        // Taps read forward of the centre only, each a whole channel vector
        // further on; the kernel rows are in reverse so indices matter.
        let in_stride = channels * stride;
        let out_stride = channels + 3;
        let offsets: Vec<isize> = (0..taps as isize).map(|t| t * channels as isize).collect();
        let tap_indices: Vec<usize> = (0..taps).rev().collect();
        let k_stride = channels + 1;
        let input: Vec<f32> =
            (0..(len + taps + 1) * in_stride + channels).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let kernel: Vec<f32> = (0..taps * k_stride).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        let bias: Vec<f32> = (0..channels).map(|c| c as f32 * 0.5 - 1.0).collect();
        let expected = reference(&input, &kernel, &tap_indices, &offsets, &bias, k_stride, len, in_stride, out_stride);
        let mut output = vec![f32::NAN; len.max(1) * out_stride];
        unsafe {
            depthwise_c_f32(
                input.as_ptr(),
                output.as_mut_ptr(),
                kernel.as_ptr(),
                &tap_indices,
                &offsets,
                bias.as_ptr(),
                channels,
                k_stride,
                len,
                in_stride as isize,
                out_stride as isize,
            )
        };
        for i in 0..len {
            for c in 0..channels {
                let (got, want) = (output[i * out_stride + c], expected[i * out_stride + c]);
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "channels {channels} taps {taps} len {len} stride {stride}: position {i} channel {c}: {got} != {want}"
                );
            }
            // The gap between rows is not written.
            for c in channels..out_stride {
                assert!(output[i * out_stride + c].is_nan(), "wrote past channel {channels}");
            }
        }
    }

    #[test]
    fn tract_runs_this_kernel_on_a_machine_with_avx2_and_fma() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        assert_eq!(super::channel_last_kernel(), Some(super::x86_64::NAME));
    }
}
