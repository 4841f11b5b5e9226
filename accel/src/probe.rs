//! What accelerators this machine really has. Every probe degrades to "none found, and why"
//! instead of failing: a CPU-only node runs the same binary.

use serde::Serialize;
use std::path::Path;

/// One CUDA device as the driver reports it.
#[derive(Debug, Clone, Serialize)]
pub struct CudaDevice {
    pub ordinal: u32,
    pub name: String,
    pub memory_bytes: u64,
    pub compute_capability: (i32, i32),
}

/// The result of a probe: the devices found, or why none could be looked for.
#[derive(Debug, Clone, Serialize)]
pub struct Probe<T> {
    pub devices: Vec<T>,
    /// Why the probe found nothing (no driver library, driver error), when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// NVIDIA GPUs through the CUDA driver API (cudarc, loaded at run time). The library is looked
/// for before any call: cudarc panics on a missing driver otherwise.
pub fn cuda_devices() -> Probe<CudaDevice> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    if !unsafe { sys::is_culib_present() } {
        return Probe {
            devices: Vec::new(),
            unavailable: Some("no CUDA driver library (libcuda.so) on this machine".into()),
        };
    }
    let devices = (|| -> Result<Vec<CudaDevice>, result::DriverError> {
        result::init()?;
        (0..result::device::get_count()?)
            .map(|ordinal| {
                let device = result::device::get(ordinal)?;
                let attribute = |a| {
                    // SAFETY: `device` came from the driver just above.
                    unsafe { result::device::get_attribute(device, a) }
                };
                Ok(CudaDevice {
                    ordinal: ordinal as u32,
                    name: result::device::get_name(device)?,
                    // SAFETY: as above.
                    memory_bytes: unsafe { result::device::total_mem(device) }? as u64,
                    compute_capability: (
                        attribute(
                            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                        )?,
                        attribute(
                            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                        )?,
                    ),
                })
            })
            .collect()
    })();
    match devices {
        Ok(devices) => Probe {
            devices,
            unavailable: None,
        },
        Err(e) => Probe {
            devices: Vec::new(),
            unavailable: Some(format!("the CUDA driver failed: {e:?}")),
        },
    }
}

/// Free bytes on CUDA device `ordinal`, as its driver counts them (every process's allocations
/// included). Binds the device's primary context, the one ONNX Runtime and tract-cuda use, to
/// the calling thread.
pub fn cuda_free_memory(ordinal: u32) -> Result<u64, String> {
    use cudarc::driver::{CudaContext, sys};
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) on this machine".into());
    }
    let context =
        CudaContext::new(ordinal as usize).map_err(|e| format!("cuda:{ordinal}: {e:?}"))?;
    let (free, _total) = context
        .mem_get_info()
        .map_err(|e| format!("cuda:{ordinal}: {e:?}"))?;
    Ok(free as u64)
}

/// Xilinx FPGA cards through the Xilinx runtime's device files (`/dev/xclmgmt<N>` for the
/// management function, `/dev/dri/renderD<N>` user functions listed under `/dev/xfpga`), under
/// `dev_root` (`/dev` on a real node).
pub fn xilinx_devices(dev_root: &Path) -> Probe<String> {
    let mut devices: Vec<String> = std::fs::read_dir(dev_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("xclmgmt")
                .then(|| entry.path().display().to_string())
        })
        .collect();
    devices.sort();
    let unavailable = devices.is_empty().then(|| {
        format!(
            "no Xilinx management device ({}/xclmgmt*): no card, or the XRT driver is not loaded",
            dev_root.display()
        )
    });
    Probe {
        devices,
        unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_probe_returns_devices_or_says_why_not() {
        // Runs on CPU-only machines too, where cudarc would panic if asked directly.
        let probe = cuda_devices();
        if probe.devices.is_empty() {
            assert!(probe.unavailable.is_some_and(|why| !why.is_empty()));
        } else {
            assert!(
                probe
                    .devices
                    .iter()
                    .all(|d| d.memory_bytes > 0 && !d.name.is_empty())
            );
        }
    }

    #[test]
    fn xilinx_cards_are_found_by_their_device_files() {
        let dev = tempfile::tempdir().unwrap();
        assert!(xilinx_devices(dev.path()).unavailable.is_some());
        std::fs::write(dev.path().join("xclmgmt1"), b"").unwrap();
        std::fs::write(dev.path().join("xclmgmt0"), b"").unwrap();
        std::fs::write(dev.path().join("null"), b"").unwrap();
        let probe = xilinx_devices(dev.path());
        assert_eq!(probe.devices.len(), 2);
        assert!(probe.devices[0].ends_with("xclmgmt0"));
        assert!(probe.unavailable.is_none());
    }
}
