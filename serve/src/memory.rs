//! The process allocator and what the registry learns from it.
//!
//! jemalloc replaces glibc's malloc for the whole process (ONNX Runtime's C++ allocations
//! included, since its library resolves `malloc` to ours): glibc keeps freed memory in
//! per-thread arenas and rarely gives it back, so RSS would not fall when models are unloaded.
//! jemalloc also counts allocations per thread, which is how a model's footprint is measured.

use modelpod_accel::Device;
use modelpod_scoring::AllocationMeter;
use modelpod_scoring::DeviceMemoryMeter;
use tikv_jemalloc_ctl::thread::{allocatedp, deallocatedp};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Per-thread allocation counters and purging, from jemalloc.
pub struct JemallocMeter;

impl AllocationMeter for JemallocMeter {
    fn thread_net_allocated(&self) -> u64 {
        // Both counters are thread-local and monotonic; reading them cannot fail once
        // jemalloc is the allocator (it is, above), but a failure only loses a measurement.
        let allocated = allocatedp::read().map_or(0, |a| a.get());
        let deallocated = deallocatedp::read().map_or(0, |d| d.get());
        allocated.wrapping_sub(deallocated)
    }

    fn release_freed_memory(&self) {
        // "arena.<MALLCTL_ARENAS_ALL>.purge" takes no arguments; jemalloc refuses a non-null
        // new-value pointer, so the safe `raw::write` wrapper cannot express it.
        // SAFETY: a NUL-terminated name and null old/new pointers are what this mallctl expects.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if status != 0 {
            tracing::debug!(status, "jemalloc purge failed");
        }
    }
}

/// Resident set size of this process, from /proc (Linux).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Accelerator memory as the CUDA driver counts it.
pub struct CudaMemoryMeter;

impl DeviceMemoryMeter for CudaMemoryMeter {
    fn free_bytes(&self, device: Device) -> Result<u64, String> {
        match device {
            Device::Cuda(ordinal) => modelpod_accel::probe::cuda_free_memory(ordinal),
            other => Err(format!("{other} has no memory meter")),
        }
    }
}

/// The memory limit of this process's cgroup (v2, then v1), if one is set.
pub fn cgroup_memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let limit = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))?;
    let limit: u64 = limit.trim().parse().ok()?; // "max" (v2) means none
    // cgroup v1 reports "no limit" as a huge page-rounded number.
    (limit < 1 << 60).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_sees_this_threads_allocations_and_frees() {
        let meter = JemallocMeter;
        let before = meter.thread_net_allocated();
        let buffer = vec![1u8; 4 << 20];
        let during = meter.thread_net_allocated();
        assert!(during.wrapping_sub(before) >= 4 << 20);
        drop(buffer);
        let after = meter.thread_net_allocated();
        assert!(after.wrapping_sub(before) < 64 << 10);
    }

    #[test]
    fn resident_size_is_read() {
        assert!(resident_bytes().unwrap() > 1 << 20);
    }
}
