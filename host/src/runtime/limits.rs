//! Per-module resource limits and the store limiter that enforces the
//! memory cap.

use std::time::Duration;
use wasmtime::ResourceLimiter;

/// What one request of a module may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleLimits {
    /// Maximum linear memory of the guest instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time for one request, from instantiation to the response.
    pub deadline: Duration,
}

impl ModuleLimits {
    /// Ceiling for any module's memory: the pooling allocator reserves
    /// address space for this much per instance.
    pub const MAX_MEMORY_BYTES: usize = 4 << 30;

    /// Checks that a guest could run within these limits at all.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_bytes < 1 << 20 || self.memory_bytes > Self::MAX_MEMORY_BYTES {
            return Err(format!(
                "memory limit {} bytes is outside 1 MiB..={} GiB",
                self.memory_bytes,
                Self::MAX_MEMORY_BYTES >> 30
            ));
        }
        if self.deadline.is_zero() {
            return Err("the deadline is zero".to_owned());
        }
        Ok(())
    }
}

impl Default for ModuleLimits {
    fn default() -> Self {
        ModuleLimits { memory_bytes: 256 << 20, deadline: Duration::from_secs(10) }
    }
}

/// Enforces [`ModuleLimits::memory_bytes`] and remembers whether the guest
/// ran into it, so that the trap that follows can be reported as such.
pub(crate) struct GuestLimiter {
    memory_bytes: usize,
    pub(crate) refused_growth: Option<usize>,
}

/// Elements one guest table may hold: far more than a Rust guest needs.
/// The pooling allocator's table slots are this size, so they, not the
/// limiter, bound table growth.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 20_000;

impl GuestLimiter {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        GuestLimiter { memory_bytes, refused_growth: None }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // Refusing lets `memory.grow` return -1 as the spec says; a Rust
            // guest then aborts on its failed allocation.
            self.refused_growth = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Growth past the pool's slot (MAX_TABLE_ELEMENTS) fails on its own.
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_usable_and_extremes_are_refused() {
        assert_eq!(ModuleLimits::default().validate(), Ok(()));
        let too_small = ModuleLimits { memory_bytes: 4096, ..Default::default() };
        assert!(too_small.validate().is_err_and(|m| m.contains("memory limit")));
        let too_large = ModuleLimits { memory_bytes: ModuleLimits::MAX_MEMORY_BYTES + 1, ..Default::default() };
        assert!(too_large.validate().is_err());
        let no_time = ModuleLimits { deadline: Duration::ZERO, ..Default::default() };
        assert!(no_time.validate().is_err_and(|m| m.contains("deadline")));
    }

    #[test]
    fn growth_past_the_cap_is_refused_and_remembered() {
        let mut limiter = GuestLimiter::new(1 << 20);
        assert!(matches!(limiter.memory_growing(0, 1 << 20, None), Ok(true)));
        assert_eq!(limiter.refused_growth, None);
        assert!(matches!(limiter.memory_growing(1 << 20, 2 << 20, None), Ok(false)));
        assert_eq!(limiter.refused_growth, Some(2 << 20));
    }
}
