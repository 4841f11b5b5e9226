//! Where a model instance runs: the host CPU, one CUDA device or one FPGA card.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The memory ledger of every CPU engine: host memory.
pub const HOST_MEMORY: &str = "host";

/// One device an engine session is bound to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Cpu,
    /// A CUDA device by driver ordinal.
    Cuda(u32),
    /// An FPGA card by index among the cards the probe found.
    Fpga(u32),
}

impl Device {
    pub fn kind(self) -> DeviceKind {
        match self {
            Device::Cpu => DeviceKind::Cpu,
            Device::Cuda(_) => DeviceKind::Gpu,
            Device::Fpga(_) => DeviceKind::Fpga,
        }
    }

    /// The memory ledger a model on this device charges: host memory for the CPU, the
    /// device's own memory otherwise (the budgets' `cuda:0`, `fpga:0` names).
    pub fn memory_ledger(self) -> String {
        match self {
            Device::Cpu => HOST_MEMORY.to_string(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Fpga(n) => write!(f, "fpga:{n}"),
        }
    }
}

/// A class of device, as a model manifest may pin it (`device = "gpu"`), and as Triton's
/// instance groups name it (`KIND_CPU`, `KIND_GPU`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Gpu,
    Fpga,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
            DeviceKind::Fpga => "fpga",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "gpu" | "cuda" => Ok(DeviceKind::Gpu),
            "fpga" => Ok(DeviceKind::Fpga),
            other => Err(format!(
                "unknown device kind '{other}' (expected cpu, gpu or fpga)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_name_their_memory_ledgers() {
        assert_eq!(Device::Cpu.memory_ledger(), "host");
        assert_eq!(Device::Cuda(1).memory_ledger(), "cuda:1");
        assert_eq!(Device::Fpga(0).to_string(), "fpga:0");
        assert_eq!(Device::Cuda(3).kind(), DeviceKind::Gpu);
        assert_eq!("CUDA".parse::<DeviceKind>(), Ok(DeviceKind::Gpu));
        assert!("tpu".parse::<DeviceKind>().is_err());
    }
}
