//! The store limiter that holds one request to its module's limits
//! ([`ModuleLimits`]): one memory account for everything the request's
//! instance holds (every linear memory, every table, the `wasi:nn` tensors
//! it keeps in the host), and caps on how many instances, memories and
//! tables its component may create, whatever the component's shape.

pub use mantle_types::ModuleLimits;
use wasmtime::ResourceLimiter;

/// Core instances one component may create. A Rust `wasm32-wasip2` guest
/// has three (its program and two small shims); guests that link shared
/// libraries into one component have more.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Linear memories one component may define across its core modules.
/// Guests built by today's toolchains define one.
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables one component may define across its core modules.
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;
/// Elements one guest table may hold: far more than a Rust guest needs.
/// The pooling allocator's table slots are this size.
pub const MAX_TABLE_ELEMENTS: usize = 20_000;
/// What a table element costs the memory account: wasmtime holds each as
/// a pointer.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Holds a request's instance to its memory account and its caps, and
/// remembers a refusal, so that the failure that follows can be reported
/// as the limit rather than as a bare trap.
pub(crate) struct GuestLimiter {
    limit: usize,
    /// Bytes held now: linear memories, tables and `wasi:nn` tensors.
    held: usize,
    /// What the guest would have held when it was refused.
    pub(crate) refused: Option<usize>,
}

impl GuestLimiter {
    pub(crate) fn new(limit: usize) -> Self {
        GuestLimiter { limit, held: 0, refused: None }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Charges `bytes` to the account if they fit; otherwise records the
    /// refusal and charges nothing.
    pub(crate) fn charge(&mut self, bytes: usize) -> bool {
        let wanted = self.held.saturating_add(bytes);
        if wanted > self.limit {
            self.refused = Some(wanted);
            return false;
        }
        self.held = wanted;
        true
    }

    /// Returns `bytes` that were charged.
    pub(crate) fn release(&mut self, bytes: usize) {
        self.held = self.held.saturating_sub(bytes);
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Growth past the memory's own maximum fails whatever we say; it
        // must not be charged.
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        // Refusing lets `memory.grow` return -1 as the spec says (a Rust
        // guest then aborts on its failed allocation), and makes a memory
        // whose initial size does not fit fail instantiation.
        Ok(self.charge(desired.saturating_sub(current)))
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        Ok(self.charge(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES_PER_COMPONENT as usize
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_COMPONENT as usize
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_COMPONENT as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_memory_and_table_draws_on_one_account() {
        let mut limiter = GuestLimiter::new(3 << 20);
        // Two memories of 1 MiB each fit; a third of 2 MiB does not.
        assert!(matches!(limiter.memory_growing(0, 1 << 20, None), Ok(true)));
        assert!(matches!(limiter.memory_growing(0, 1 << 20, None), Ok(true)));
        assert!(matches!(limiter.memory_growing(0, 2 << 20, None), Ok(false)));
        assert_eq!(limiter.refused, Some(4 << 20));
        // A table's elements count too.
        assert!(matches!(limiter.table_growing(0, (1 << 20) / TABLE_ELEMENT_BYTES, None), Ok(true)));
        assert!(matches!(limiter.memory_growing(1 << 20, (1 << 20) + 65536, None), Ok(false)));
        // Tensors given back make room again.
        limiter.release(1 << 20);
        assert!(matches!(limiter.memory_growing(1 << 20, 2 << 20, None), Ok(true)));
    }

    #[test]
    fn growth_past_a_memorys_own_maximum_is_not_charged() {
        let mut limiter = GuestLimiter::new(4 << 20);
        assert!(matches!(limiter.memory_growing(0, 1 << 20, Some(1 << 20)), Ok(true)));
        for _ in 0..10 {
            assert!(matches!(limiter.memory_growing(1 << 20, 2 << 20, Some(1 << 20)), Ok(false)));
        }
        assert_eq!(limiter.refused, None);
        assert!(limiter.charge(3 << 20));
    }
}
