//! A channel-last depthwise convolution kernel, registered with tract as
//! its `DepthwiseC` routine on x86-64.
//!
//! tract runs a depthwise convolution laid out channel-last by walking each
//! output row and handing a run of output positions to the best `DepthwiseC`
//! kernel the machine has. tract 0.23 ships one for aarch64 and wasm only, so
//! on x86-64 it falls back to a scalar loop: 6.7 of EfficientNet-Lite0's
//! 22 ms (docs/PERF-LOG.md). This kernel keeps four output positions by two
//! vectors of channels in registers, so each tap's weights are loaded once
//! for four positions. It runs at the process's vector level
//! ([`Level::chosen`]): 16 channels a vector with AVX-512, 8 with AVX2 or
//! the portable level.
//!
//! It sums with fused multiply-adds, so results may differ from tract's
//! scalar loop in the last bit; both are within the tolerance the reference
//! tests hold models to.

use super::simd::{self, Kernel, Level, Vector};

/// The name tract's routine table knows this kernel by.
pub const NAME: &str = "mantle_depthwise_c_f32";

#[cfg(target_arch = "x86_64")]
mod registration {
    use tract_onnx::tract_core::tract_linalg::isa::{Arch, IsaReq};
    use tract_onnx::tract_core::tract_linalg::routines::{Func, Routine, RoutineFactory};

    inventory::submit! {
        Routine {
            func: Func::DepthwiseC,
            arch: Some(Arch::X86_64),
            isa: IsaReq::ANY,
            boost: 0,
            round_trip: false,
            factory: RoutineFactory::DepthwiseCF32 { name: super::NAME, run: super::depthwise_c_f32 },
        }
    }
}

/// `len` output positions, each `channels` contiguous values: position
/// `i`, channel `c` is `bias[c]` plus, for every tap `t`,
/// `kernel[tap_indices[t] * k_stride + c] * input[i * in_stride + offsets[t] + c]`,
/// at [`Level::chosen`].
///
/// # Safety
/// tract's `DepthwiseCF32` contract: every input and kernel value named
/// above readable, `channels` values readable from `bias`, and `channels`
/// values writable from `output + i * out_stride` for each `i < len`.
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
    let run = Run { input, output, kernel, tap_indices, offsets, bias, channels, k_stride, len, in_stride, out_stride };
    // The chosen level is always one this CPU supports.
    let _ = simd::dispatch(Level::chosen(), run);
}

/// The same computation at `level`, over slices, for tests and benchmarks
/// that compare the levels: every index the computation reads or writes is
/// checked against the slices first. Fails if the CPU lacks `level` or an
/// index falls outside.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_at(
    level: Level,
    input: &[f32],
    output: &mut [f32],
    kernel: &[f32],
    tap_indices: &[usize],
    offsets: &[isize],
    bias: &[f32],
    k_stride: usize,
    len: usize,
    in_stride: usize,
    out_stride: usize,
) -> Result<(), String> {
    let channels = bias.len();
    if tap_indices.len() != offsets.len() {
        return Err("one offset per tap".into());
    }
    if len > 0 {
        let last = len - 1;
        for (&tap, &offset) in tap_indices.iter().zip(offsets) {
            let first = usize::try_from(offset).map_err(|_| "offsets before the input")?;
            if first + last * in_stride + channels > input.len() {
                return Err(format!("tap at offset {offset} reads past the input"));
            }
            if tap * k_stride + channels > kernel.len() {
                return Err(format!("tap {tap} reads past the kernel"));
            }
        }
        if last * out_stride + channels > output.len() {
            return Err("output too small".into());
        }
    }
    let run = Run {
        input: input.as_ptr(),
        output: output.as_mut_ptr(),
        kernel: kernel.as_ptr(),
        tap_indices,
        offsets,
        bias: bias.as_ptr(),
        channels,
        k_stride,
        len,
        in_stride: in_stride as isize,
        out_stride: out_stride as isize,
    };
    simd::dispatch(level, run).ok_or_else(|| format!("this CPU cannot run {level} kernels"))
}

/// Vector `v` of a block of `W` from `at`: all its lanes, except that the
/// block's last vector holds only `last`.
#[inline(always)]
unsafe fn load_lanes<V: Vector, const W: usize>(at: *const f32, v: usize, last: usize) -> V {
    // SAFETY: the caller's contract: `at` is valid for a whole vector, or for
    // `last` lanes when `v` is the block's last.
    unsafe { if v + 1 == W && last < V::LANES { V::load_first(at, last) } else { V::load(at) } }
}

/// One kernel call's arguments, shared by the blocks it is cut into.
struct Run<'a> {
    input: *const f32,
    output: *mut f32,
    kernel: *const f32,
    tap_indices: &'a [usize],
    offsets: &'a [isize],
    bias: *const f32,
    channels: usize,
    k_stride: usize,
    len: usize,
    in_stride: isize,
    out_stride: isize,
}

impl Kernel for Run<'_> {
    type Output = ();

    /// Cuts the channels into blocks of two vectors and one, with a last
    /// vector of the channels left, and the positions into groups of four,
    /// with single ones left.
    #[inline(always)]
    unsafe fn run<V: Vector>(self) {
        // SAFETY: the caller holds to `depthwise_c_f32`'s contract, and
        // the CPU has the vector's level (`run`'s contract).
        unsafe {
            let mut c = 0;
            while c + 2 * V::LANES <= self.channels {
                self.positions::<V, 2>(c, V::LANES);
                c += 2 * V::LANES;
            }
            if c + V::LANES <= self.channels {
                self.positions::<V, 1>(c, V::LANES);
                c += V::LANES;
            }
            if c < self.channels {
                self.positions::<V, 1>(c, self.channels - c);
            }
        }
    }
}

impl Run<'_> {
    /// `W` vectors of channels from `c`, over all positions; the last
    /// vector only its first `last` lanes.
    #[inline(always)]
    unsafe fn positions<V: Vector, const W: usize>(&self, c: usize, last: usize) {
        // SAFETY: the caller holds to `depthwise_c_f32`'s contract for every
        // position and channel of the block, and the CPU has `V`'s level.
        unsafe {
            let mut i = 0;
            while i + 4 <= self.len {
                self.block::<V, 4, W>(c, i, last);
                i += 4;
            }
            while i < self.len {
                self.block::<V, 1, W>(c, i, last);
                i += 1;
            }
        }
    }

    /// `P` positions from `i` by `W` vectors of channels from `c`, all
    /// held in registers across the taps. Only a vector of fewer than
    /// `LANES` channels (`last`) takes the masked loads and stores.
    #[inline(always)]
    unsafe fn block<V: Vector, const P: usize, const W: usize>(&self, c: usize, i: usize, last: usize) {
        // SAFETY: the caller holds to `depthwise_c_f32`'s contract for every
        // position and channel of the block, and the CPU has `V`'s level.
        unsafe {
            let mut bias = [V::zero(); W];
            for (v, b) in bias.iter_mut().enumerate() {
                *b = load_lanes::<V, W>(self.bias.add(c + V::LANES * v), v, last);
            }
            let mut acc = [bias; P];
            let first = self.input.offset(i as isize * self.in_stride).add(c);
            for (&tap, &offset) in self.tap_indices.iter().zip(self.offsets) {
                let k = self.kernel.add(tap * self.k_stride + c);
                let mut weights = [V::zero(); W];
                for (v, w) in weights.iter_mut().enumerate() {
                    *w = load_lanes::<V, W>(k.add(V::LANES * v), v, last);
                }
                let x = first.offset(offset);
                for (p, sums) in acc.iter_mut().enumerate() {
                    let x = x.offset(p as isize * self.in_stride);
                    for (v, (sum, w)) in sums.iter_mut().zip(weights).enumerate() {
                        *sum = load_lanes::<V, W>(x.add(V::LANES * v), v, last).mul_add(w, *sum);
                    }
                }
            }
            for (p, sums) in acc.iter().enumerate() {
                let out = self.output.offset((i + p) as isize * self.out_stride).add(c);
                for (v, sum) in sums.iter().enumerate() {
                    if v + 1 == W && last < V::LANES {
                        sum.store_first(out.add(V::LANES * v), last);
                    } else {
                        sum.store(out.add(V::LANES * v));
                    }
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
    /// The contract at every level is tested in the `kernels` test; here,
    /// that tract picks this kernel at all.
    #[test]
    fn tract_runs_this_kernel_for_channel_last_depthwise_convolutions() {
        assert_eq!(super::channel_last_kernel(), Some(super::NAME));
    }
}
