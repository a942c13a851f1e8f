//! Which vector instructions this project's kernels run on, chosen once per
//! process from the CPU, and the few vector operations each level gives
//! them.
//!
//! A kernel is written once, generic over [`Vector`], and [`dispatch`]
//! compiles and calls it for the chosen [`Level`]: the generic body is
//! inlined into a function built with that level's target features, so
//! each level gets its own machine code from the same source. The tile
//! shapes, which depend on the vector width and the register count, are
//! the kernel's to choose per level.
//!
//! aarch64 gets the same structure with a NEON level (`float32x4_t`, 32
//! registers); until it has one, its models keep tract's own NEON kernels
//! and the portable level serves only tests.

use std::sync::OnceLock;

/// A set of vector instructions a kernel can be compiled for, from the
/// plainest to the widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust over arrays of 8 lanes, which the compiler vectorizes
    /// for the target's baseline (SSE2 on x86-64). Runs anywhere.
    Portable,
    /// 256-bit AVX2 with fused multiply-add: 8 lanes, 16 registers.
    Avx2,
    /// 512-bit AVX-512 Foundation: 16 lanes, 32 registers, masked loads
    /// and stores.
    Avx512,
}

/// What the environment variable that lowers the level may name.
pub const LEVEL_VARIABLE: &str = "MANTLE_CPU_KERNELS";

impl Level {
    /// Every level, plainest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The name logs, reports and [`LEVEL_VARIABLE`] use.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The CPU features the level needs, as `/proc/cpuinfo` spells them.
    pub fn features(self) -> &'static str {
        match self {
            Level::Portable => "none",
            Level::Avx2 => "avx2 fma",
            Level::Avx512 => "avx512f avx2 fma",
        }
    }

    /// How many `f32` lanes one vector of the level holds.
    pub fn lanes(self) -> usize {
        match self {
            Level::Portable | Level::Avx2 => 8,
            Level::Avx512 => 16,
        }
    }

    /// How many vector registers the level has, which bounds the tiles a
    /// kernel can keep in them.
    pub fn registers(self) -> usize {
        match self {
            Level::Portable | Level::Avx2 => 16,
            Level::Avx512 => 32,
        }
    }

    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|level| level.name() == name)
    }

    /// Whether this CPU can run code built for the level.
    pub fn supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => Level::Avx2.supported() && is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Level::Avx2 | Level::Avx512 => false,
        }
    }

    /// The widest level this CPU supports.
    pub fn detected() -> Level {
        Level::ALL.into_iter().rev().find(|level| level.supported()).unwrap_or(Level::Portable)
    }

    /// The level every kernel runs at in this process: the detected one,
    /// unless [`LEVEL_VARIABLE`] names a plainer one, to compare levels on
    /// one machine. Chosen on first use and fixed from then on.
    pub fn chosen() -> Level {
        static CHOSEN: OnceLock<Level> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let detected = Level::detected();
            let Ok(asked) = std::env::var(LEVEL_VARIABLE) else { return detected };
            match Level::from_name(asked.trim()) {
                Some(level) if level <= detected => level,
                Some(level) => {
                    tracing::warn!(
                        "{LEVEL_VARIABLE}={} needs {}, which this CPU lacks; using {}",
                        level.name(),
                        level.features(),
                        detected.name()
                    );
                    detected
                }
                None => {
                    let known: Vec<&str> = Level::ALL.iter().map(|l| l.name()).collect();
                    tracing::warn!(
                        "{LEVEL_VARIABLE}={} is not one of {}; using {}",
                        mantle_types::untrusted::escaped(&asked),
                        known.join(", "),
                        detected.name()
                    );
                    detected
                }
            }
        })
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU's model name and the vector features that matter to the
/// kernels here and to tract's, for the start-up log and benchmark reports.
pub fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    format!("{model}; vector features: {}", vector_features().join(" "))
}

/// The vector features this CPU has, of those any kernel here or in tract
/// might use.
pub fn vector_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($feature:tt),+) => {
                $( if is_x86_feature_detected!($feature) { features.push($feature); } )+
            };
        }
        probe!(
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        features.push("neon");
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            features.push("dotprod");
        }
        if std::arch::is_aarch64_feature_detected!("fp16") {
            features.push("fp16");
        }
    }
    features
}

/// The vector operations the kernels are written in. Every method is
/// `unsafe`: it may only run on a CPU with its level, and the pointers must
/// be valid for the lanes named.
pub(super) trait Vector: Copy {
    const LANES: usize;
    /// How many of these vectors the CPU holds in registers.
    const REGISTERS: usize;
    unsafe fn zero() -> Self;
    /// `LANES` values from `at`.
    unsafe fn load(at: *const f32) -> Self;
    /// The first `lanes` values from `at` (fewer than `LANES`), zero above;
    /// nothing past them is read.
    unsafe fn load_first(at: *const f32, lanes: usize) -> Self;
    /// The value at `at` in every lane.
    unsafe fn broadcast(at: *const f32) -> Self;
    unsafe fn splat(value: f32) -> Self;
    unsafe fn store(self, at: *mut f32);
    /// The first `lanes` lanes (fewer than `LANES`); nothing past them is
    /// written.
    unsafe fn store_first(self, at: *mut f32, lanes: usize);
    /// `self × by + to`, fused where the level has it.
    unsafe fn mul_add(self, by: Self, to: Self) -> Self;
    unsafe fn add(self, other: Self) -> Self;
    unsafe fn min(self, other: Self) -> Self;
    unsafe fn max(self, other: Self) -> Self;
}

/// A kernel, generic over the vector it is computed in.
pub(super) trait Kernel {
    type Output;
    /// Must be `#[inline(always)]`, and so must everything generic it
    /// calls: that is what compiles it with the level's target features.
    ///
    /// # Safety
    /// The CPU has `V`'s level; [`dispatch`] checks it.
    unsafe fn run<V: Vector>(self) -> Self::Output;
}

/// Runs `kernel` compiled for `level`; `None`, running nothing, if this
/// CPU lacks the level. Data laid out for one level's vector width cannot
/// be run at another, so there is no quiet fallback.
pub(super) fn dispatch<K: Kernel>(level: Level, kernel: K) -> Option<K::Output> {
    if !level.supported() {
        return None;
    }
    match level {
        // SAFETY: every CPU runs the portable level.
        Level::Portable => Some(unsafe { kernel.run::<Portable>() }),
        // SAFETY: the CPU has the level's features, checked above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => Some(unsafe { x86_64::on_avx2(kernel) }),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA: `supported` checked it above.
        Level::Avx512 => Some(unsafe { x86_64::on_avx512(kernel) }),
        #[cfg(not(target_arch = "x86_64"))]
        Level::Avx2 | Level::Avx512 => None,
    }
}

/// Eight lanes in plain Rust.
#[derive(Clone, Copy)]
pub(super) struct Portable([f32; 8]);

impl Vector for Portable {
    const LANES: usize = 8;
    const REGISTERS: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }

    #[inline(always)]
    unsafe fn load(at: *const f32) -> Self {
        // SAFETY: the caller's contract: `at` is valid for `LANES` reads.
        Portable(unsafe { at.cast::<[f32; 8]>().read_unaligned() })
    }

    #[inline(always)]
    unsafe fn load_first(at: *const f32, lanes: usize) -> Self {
        let mut values = [0.0; 8];
        for (lane, value) in values.iter_mut().enumerate().take(lanes) {
            // SAFETY: `lane` < `lanes`, and the caller's contract makes `at` valid
            // for `lanes` reads.
            *value = unsafe { *at.add(lane) };
        }
        Portable(values)
    }

    #[inline(always)]
    unsafe fn broadcast(at: *const f32) -> Self {
        // SAFETY: the caller's contract: `at` is valid for one read, on a CPU with
        // this vector's level.
        Portable([unsafe { *at }; 8])
    }

    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Portable([value; 8])
    }

    #[inline(always)]
    unsafe fn store(self, at: *mut f32) {
        // SAFETY: the caller's contract: `at` is valid for `LANES` writes.
        unsafe { at.cast::<[f32; 8]>().write_unaligned(self.0) }
    }

    #[inline(always)]
    unsafe fn store_first(self, at: *mut f32, lanes: usize) {
        for (lane, value) in self.0.iter().enumerate().take(lanes) {
            // SAFETY: `lane` < `lanes`, and the caller's contract makes `at` valid
            // for `lanes` writes.
            unsafe { *at.add(lane) = *value };
        }
    }

    #[inline(always)]
    unsafe fn mul_add(self, by: Self, to: Self) -> Self {
        Portable(std::array::from_fn(|lane| self.0[lane] * by.0[lane] + to.0[lane]))
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        Portable(std::array::from_fn(|lane| self.0[lane] + other.0[lane]))
    }

    #[inline(always)]
    unsafe fn min(self, other: Self) -> Self {
        Portable(std::array::from_fn(|lane| self.0[lane].min(other.0[lane])))
    }

    #[inline(always)]
    unsafe fn max(self, other: Self) -> Self {
        Portable(std::array::from_fn(|lane| self.0[lane].max(other.0[lane])))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::x86_64::*;

    use super::{Kernel, Vector};

    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn on_avx512<K: Kernel>(kernel: K) -> K::Output {
        // SAFETY: this function's contract: the CPU has AVX-512F, which `Avx512` needs.
        unsafe { kernel.run::<Avx512>() }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn on_avx2<K: Kernel>(kernel: K) -> K::Output {
        // SAFETY: this function's contract: the CPU has AVX2 and FMA, which `Avx2` needs.
        unsafe { kernel.run::<Avx2>() }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    /// A mask of the first `lanes` of eight 32-bit lanes.
    #[inline(always)]
    unsafe fn first_lanes(lanes: usize) -> __m256i {
        // SAFETY: register arithmetic only; the caller's contract is that the CPU
        // has this vector's level.
        unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
    }

    impl Vector for Avx2 {
        const LANES: usize = 8;
        const REGISTERS: usize = 16;

        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx2(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `LANES` reads.
            Avx2(unsafe { _mm256_loadu_ps(at) })
        }

        #[inline(always)]
        unsafe fn load_first(at: *const f32, lanes: usize) -> Self {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `lanes` reads; the mask reads no lane past them.
            Avx2(unsafe { _mm256_maskload_ps(at, first_lanes(lanes)) })
        }

        #[inline(always)]
        unsafe fn broadcast(at: *const f32) -> Self {
            // SAFETY: the caller's contract: `at` is valid for one read, on a CPU
            // with this vector's level.
            Avx2(unsafe { _mm256_broadcast_ss(&*at) })
        }

        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx2(unsafe { _mm256_set1_ps(value) })
        }

        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `LANES` writes.
            unsafe { _mm256_storeu_ps(at, self.0) }
        }

        #[inline(always)]
        unsafe fn store_first(self, at: *mut f32, lanes: usize) {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `lanes` writes; the mask writes no lane past them.
            unsafe { _mm256_maskstore_ps(at, first_lanes(lanes), self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, by: Self, to: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx2(unsafe { _mm256_fmadd_ps(self.0, by.0, to.0) })
        }

        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx2(unsafe { _mm256_add_ps(self.0, other.0) })
        }

        #[inline(always)]
        unsafe fn min(self, other: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx2(unsafe { _mm256_min_ps(self.0, other.0) })
        }

        #[inline(always)]
        unsafe fn max(self, other: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx2(unsafe { _mm256_max_ps(self.0, other.0) })
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(__m512);

    /// A mask of the first `lanes` of sixteen.
    #[inline(always)]
    fn first_of_sixteen(lanes: usize) -> __mmask16 {
        ((1u32 << lanes.min(16)) - 1) as __mmask16
    }

    impl Vector for Avx512 {
        const LANES: usize = 16;
        const REGISTERS: usize = 32;

        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx512(unsafe { _mm512_setzero_ps() })
        }

        #[inline(always)]
        unsafe fn load(at: *const f32) -> Self {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `LANES` reads.
            Avx512(unsafe { _mm512_loadu_ps(at) })
        }

        #[inline(always)]
        unsafe fn load_first(at: *const f32, lanes: usize) -> Self {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `lanes` reads; the mask reads no lane past them.
            Avx512(unsafe { _mm512_maskz_loadu_ps(first_of_sixteen(lanes), at) })
        }

        #[inline(always)]
        unsafe fn broadcast(at: *const f32) -> Self {
            // SAFETY: the caller's contract: `at` is valid for one read, on a CPU
            // with this vector's level.
            Avx512(unsafe { _mm512_set1_ps(*at) })
        }

        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx512(unsafe { _mm512_set1_ps(value) })
        }

        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `LANES` writes.
            unsafe { _mm512_storeu_ps(at, self.0) }
        }

        #[inline(always)]
        unsafe fn store_first(self, at: *mut f32, lanes: usize) {
            // SAFETY: the caller's contract: the CPU has this vector's level and
            // `at` is valid for `lanes` writes; the mask writes no lane past them.
            unsafe { _mm512_mask_storeu_ps(at, first_of_sixteen(lanes), self.0) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, by: Self, to: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx512(unsafe { _mm512_fmadd_ps(self.0, by.0, to.0) })
        }

        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx512(unsafe { _mm512_add_ps(self.0, other.0) })
        }

        #[inline(always)]
        unsafe fn min(self, other: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx512(unsafe { _mm512_min_ps(self.0, other.0) })
        }

        #[inline(always)]
        unsafe fn max(self, other: Self) -> Self {
            // SAFETY: register arithmetic only; the caller's contract is that the
            // CPU has this vector's level.
            Avx512(unsafe { _mm512_max_ps(self.0, other.0) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_named_both_ways() {
        for pair in Level::ALL.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        for level in Level::ALL {
            assert_eq!(Level::from_name(level.name()), Some(level));
        }
        assert_eq!(Level::from_name("sse9"), None);
    }

    #[test]
    fn the_detected_level_is_supported_and_so_is_every_plainer_one() {
        let detected = Level::detected();
        for level in Level::ALL {
            assert_eq!(level.supported(), level <= detected, "{level}");
        }
    }
}
