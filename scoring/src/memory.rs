//! Memory budgets and how a model's footprint is measured.
//!
//! A model's footprint is not guessed from its file: the registry measures the bytes the
//! loading thread allocated, net of what it freed, while it parsed and optimised the model,
//! created its sessions and ran one warm-up inference. The runtime supplies that counter
//! ([`AllocationMeter`]) from its allocator; without one, the file size times
//! [`UNMEASURED_FOOTPRINT_FACTOR`] stands in.

use std::collections::BTreeMap;
use std::path::Path;

/// The ledger every CPU engine charges.
pub use modelpod_accel::HOST_MEMORY as HOST;

/// Stand-in footprint per byte of model file, before a model has been measured (it reserves
/// budget for the load itself) and when no meter is installed.
pub const UNMEASURED_FOOTPRINT_FACTOR: u64 = 2;

/// Per-model overhead that no file size shows (sessions, worker threads, batch buffers),
/// added to every stand-in.
pub const UNMEASURED_OVERHEAD_BYTES: u64 = 256 * 1024;

/// The stand-in footprint of a model file: its size times [`UNMEASURED_FOOTPRINT_FACTOR`]
/// plus [`UNMEASURED_OVERHEAD_BYTES`] (a missing file counts as empty).
pub fn unmeasured_footprint(file: &Path) -> u64 {
    let file_bytes = std::fs::metadata(file).map_or(0, |m| m.len());
    file_bytes * UNMEASURED_FOOTPRINT_FACTOR + UNMEASURED_OVERHEAD_BYTES
}

/// Counts what the calling thread allocates. Implemented by the process's allocator.
pub trait AllocationMeter: Send + Sync {
    /// Bytes allocated minus bytes freed by the calling thread since it started (wraps freely:
    /// only differences are used).
    fn thread_net_allocated(&self) -> u64;

    /// Gives memory freed by unloaded models back to the operating system now.
    fn release_freed_memory(&self) {}
}

/// Reads an accelerator's free memory, so that a load's footprint on it is what the free
/// memory dropped by. Loads measured this way are serialised per registry.
pub trait DeviceMemoryMeter: Send + Sync {
    fn free_bytes(&self, device: modelpod_accel::Device) -> Result<u64, String>;
}

/// Bytes a model holds, per memory ledger (`host`, `cuda:0`...).
pub type Footprint = BTreeMap<String, u64>;

/// Limits on what loaded models may hold, per device: [`HOST`] for host memory, and e.g.
/// `cuda:0` for accelerator memory that device engines charge. A device with no limit is
/// unbounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryBudget {
    limits: BTreeMap<String, u64>,
}

impl MemoryBudget {
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget::default()
    }

    pub fn with_limit(mut self, device: &str, bytes: u64) -> MemoryBudget {
        self.limits.insert(device.to_string(), bytes);
        self
    }

    pub fn limit(&self, device: &str) -> Option<u64> {
        self.limits.get(device).copied()
    }

    pub fn limits(&self) -> impl Iterator<Item = (&str, u64)> {
        self.limits.iter().map(|(d, b)| (d.as_str(), *b))
    }
}

/// Parses a size such as `512MiB`, `4GiB`, `1.5G` or `1048576` (bytes). Binary (KiB, MiB,
/// GiB, TiB) and decimal (K/KB, M/MB, G/GB, T/TB) suffixes, case-insensitive.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text.trim())
        .map_err(|e| format!("'{text}' is not a size (e.g. 512MiB, 4GiB, 1073741824): {e}"))
}

/// Bytes in mebibytes, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("4gib").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes(" 2 KB ").unwrap(), 2000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn budgets_are_per_device() {
        let budget = MemoryBudget::unlimited()
            .with_limit(HOST, 1 << 30)
            .with_limit("cuda:0", 8 << 30);
        assert_eq!(budget.limit(HOST), Some(1 << 30));
        assert_eq!(budget.limit("cuda:0"), Some(8 << 30));
        assert_eq!(budget.limit("cuda:1"), None);
    }
}
