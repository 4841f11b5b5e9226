//! Azure VM sizes and the accelerators they carry. A deployment's hardware comes from its
//! node pool's VM size; this table says what a size promises, so the engine plan can compare
//! that promise with what the device probes find.

use serde::Serialize;

/// What kind of accelerator a VM size carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceleratorKind {
    None,
    NvidiaGpu,
    AmdGpu,
    XilinxFpga,
    IntelFpga,
}

/// What a VM size promises.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkuSpec {
    /// The size as Azure spells it, e.g. `Standard_NC24ads_A100_v4`.
    pub vm_size: String,
    pub family: &'static str,
    pub accelerator: AcceleratorKind,
    /// Vendor and model, e.g. `NVIDIA A100 80GB PCIe`.
    pub device_model: Option<&'static str>,
    /// Whole devices; fractional GPU sizes (NVv4, NVadsA10 v5) count as one partition.
    pub device_count: u32,
    /// Memory per device (or per partition) in GiB.
    pub device_memory_gib: Option<f64>,
    /// Whether modelpod has an engine for this accelerator.
    pub supported: bool,
    /// Why not, or what to know.
    pub note: Option<&'static str>,
}

/// (lower-case size without `standard_`, family, kind, model, count, GiB per device, note)
type Row = (
    &'static str,
    &'static str,
    AcceleratorKind,
    &'static str,
    u32,
    f64,
    Option<&'static str>,
);

use AcceleratorKind::{AmdGpu, IntelFpga, NvidiaGpu, XilinxFpga};

const FRACTIONAL: Option<&str> = Some("a partition of one GPU");
const RETIRED: Option<&str> = Some("retired by Azure; kept so old deployment configs resolve");

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // NC: Tesla K80 (one K80 board = two GPUs of 12 GiB).
    ("nc6", "NC", NvidiaGpu, "NVIDIA Tesla K80", 1, 12.0, RETIRED),
    ("nc12", "NC", NvidiaGpu, "NVIDIA Tesla K80", 2, 12.0, RETIRED),
    ("nc24", "NC", NvidiaGpu, "NVIDIA Tesla K80", 4, 12.0, RETIRED),
    ("nc24r", "NC", NvidiaGpu, "NVIDIA Tesla K80", 4, 12.0, RETIRED),
    // NCv2: P100.
    ("nc6s_v2", "NCv2", NvidiaGpu, "NVIDIA Tesla P100", 1, 16.0, RETIRED),
    ("nc12s_v2", "NCv2", NvidiaGpu, "NVIDIA Tesla P100", 2, 16.0, RETIRED),
    ("nc24s_v2", "NCv2", NvidiaGpu, "NVIDIA Tesla P100", 4, 16.0, RETIRED),
    ("nc24rs_v2", "NCv2", NvidiaGpu, "NVIDIA Tesla P100", 4, 16.0, RETIRED),
    // NCv3: V100 16 GB.
    ("nc6s_v3", "NCv3", NvidiaGpu, "NVIDIA Tesla V100", 1, 16.0, None),
    ("nc12s_v3", "NCv3", NvidiaGpu, "NVIDIA Tesla V100", 2, 16.0, None),
    ("nc24s_v3", "NCv3", NvidiaGpu, "NVIDIA Tesla V100", 4, 16.0, None),
    ("nc24rs_v3", "NCv3", NvidiaGpu, "NVIDIA Tesla V100", 4, 16.0, None),
    // NCasT4_v3: T4.
    ("nc4as_t4_v3", "NCasT4_v3", NvidiaGpu, "NVIDIA T4", 1, 16.0, None),
    ("nc8as_t4_v3", "NCasT4_v3", NvidiaGpu, "NVIDIA T4", 1, 16.0, None),
    ("nc16as_t4_v3", "NCasT4_v3", NvidiaGpu, "NVIDIA T4", 1, 16.0, None),
    ("nc64as_t4_v3", "NCasT4_v3", NvidiaGpu, "NVIDIA T4", 4, 16.0, None),
    // NC A100 v4: A100 80 GB PCIe.
    ("nc24ads_a100_v4", "NC_A100_v4", NvidiaGpu, "NVIDIA A100 80GB PCIe", 1, 80.0, None),
    ("nc48ads_a100_v4", "NC_A100_v4", NvidiaGpu, "NVIDIA A100 80GB PCIe", 2, 80.0, None),
    ("nc96ads_a100_v4", "NC_A100_v4", NvidiaGpu, "NVIDIA A100 80GB PCIe", 4, 80.0, None),
    // NCads H100 v5: H100 NVL.
    ("nc40ads_h100_v5", "NCads_H100_v5", NvidiaGpu, "NVIDIA H100 NVL", 1, 94.0, None),
    ("nc80adis_h100_v5", "NCads_H100_v5", NvidiaGpu, "NVIDIA H100 NVL", 2, 94.0, None),
    // ND: P40.
    ("nd6s", "ND", NvidiaGpu, "NVIDIA Tesla P40", 1, 24.0, RETIRED),
    ("nd12s", "ND", NvidiaGpu, "NVIDIA Tesla P40", 2, 24.0, RETIRED),
    ("nd24s", "ND", NvidiaGpu, "NVIDIA Tesla P40", 4, 24.0, RETIRED),
    ("nd24rs", "ND", NvidiaGpu, "NVIDIA Tesla P40", 4, 24.0, RETIRED),
    // NDv2, ND A100 v4, NDm A100 v4, ND H100 v5, ND H200 v5: eight GPUs each.
    ("nd40rs_v2", "NDv2", NvidiaGpu, "NVIDIA Tesla V100 32GB", 8, 32.0, None),
    ("nd96asr_v4", "ND_A100_v4", NvidiaGpu, "NVIDIA A100 40GB SXM", 8, 40.0, None),
    ("nd96amsr_a100_v4", "NDm_A100_v4", NvidiaGpu, "NVIDIA A100 80GB SXM", 8, 80.0, None),
    ("nd96isr_h100_v5", "ND_H100_v5", NvidiaGpu, "NVIDIA H100 80GB SXM", 8, 80.0, None),
    ("nd96isr_h200_v5", "ND_H200_v5", NvidiaGpu, "NVIDIA H200", 8, 141.0, None),
    // NV: M60 (one M60 board = two GPUs of 8 GiB).
    ("nv6", "NV", NvidiaGpu, "NVIDIA Tesla M60", 1, 8.0, RETIRED),
    ("nv12", "NV", NvidiaGpu, "NVIDIA Tesla M60", 2, 8.0, RETIRED),
    ("nv24", "NV", NvidiaGpu, "NVIDIA Tesla M60", 4, 8.0, RETIRED),
    ("nv12s_v3", "NVv3", NvidiaGpu, "NVIDIA Tesla M60", 1, 8.0, None),
    ("nv24s_v3", "NVv3", NvidiaGpu, "NVIDIA Tesla M60", 2, 8.0, None),
    ("nv48s_v3", "NVv3", NvidiaGpu, "NVIDIA Tesla M60", 4, 8.0, None),
    // NVadsA10 v5: A10, fractional below NV36.
    ("nv6ads_a10_v5", "NVadsA10_v5", NvidiaGpu, "NVIDIA A10", 1, 4.0, FRACTIONAL),
    ("nv12ads_a10_v5", "NVadsA10_v5", NvidiaGpu, "NVIDIA A10", 1, 8.0, FRACTIONAL),
    ("nv18ads_a10_v5", "NVadsA10_v5", NvidiaGpu, "NVIDIA A10", 1, 12.0, FRACTIONAL),
    ("nv36ads_a10_v5", "NVadsA10_v5", NvidiaGpu, "NVIDIA A10", 1, 24.0, None),
    ("nv36adms_a10_v5", "NVadsA10_v5", NvidiaGpu, "NVIDIA A10", 1, 24.0, None),
    ("nv72ads_a10_v5", "NVadsA10_v5", NvidiaGpu, "NVIDIA A10", 2, 24.0, None),
    // NVv4: AMD Radeon Instinct MI25, fractional below NV32.
    ("nv4as_v4", "NVv4", AmdGpu, "AMD Radeon Instinct MI25", 1, 2.0, FRACTIONAL),
    ("nv8as_v4", "NVv4", AmdGpu, "AMD Radeon Instinct MI25", 1, 4.0, FRACTIONAL),
    ("nv16as_v4", "NVv4", AmdGpu, "AMD Radeon Instinct MI25", 1, 8.0, FRACTIONAL),
    ("nv32as_v4", "NVv4", AmdGpu, "AMD Radeon Instinct MI25", 1, 16.0, None),
    // ND MI300X v5.
    ("nd96isr_mi300x_v5", "ND_MI300X_v5", AmdGpu, "AMD Instinct MI300X", 8, 192.0, None),
    // NP: Xilinx Alveo U250.
    ("np10s", "NP", XilinxFpga, "Xilinx Alveo U250", 1, 64.0, None),
    ("np20s", "NP", XilinxFpga, "Xilinx Alveo U250", 2, 64.0, None),
    ("np40s", "NP", XilinxFpga, "Xilinx Alveo U250", 4, 64.0, None),
    // PB: Intel Arria 10, Azure ML's original FPGA service.
    ("pb6s", "PB", IntelFpga, "Intel Arria 10", 1, 8.0, None),
];

/// What `vm_size` (e.g. `Standard_NC6s_v3`, any case, with or without `Standard_`) promises;
/// sizes not in the table are taken to have no accelerator.
pub fn lookup(vm_size: &str) -> SkuSpec {
    let trimmed = vm_size.trim();
    let lower = trimmed.to_ascii_lowercase();
    let key = lower
        .strip_prefix("standard_")
        .or_else(|| lower.strip_prefix("basic_"))
        .unwrap_or(&lower);
    match TABLE.iter().find(|row| row.0 == key) {
        Some(&(_, family, accelerator, model, count, memory, note)) => SkuSpec {
            vm_size: trimmed.to_string(),
            family,
            accelerator,
            device_model: Some(model),
            device_count: count,
            device_memory_gib: Some(memory),
            supported: supported(accelerator),
            note: note.or(match accelerator {
                AmdGpu => Some("no AMD GPU engine in modelpod: served on the CPU"),
                IntelFpga => Some(
                    "Azure ML's Arria 10 FPGA models (Brainwave) have no ONNX path: served on the CPU",
                ),
                _ => None,
            }),
        },
        None => SkuSpec {
            vm_size: trimmed.to_string(),
            family: "other",
            accelerator: AcceleratorKind::None,
            device_model: None,
            device_count: 0,
            device_memory_gib: None,
            supported: true,
            note: None,
        },
    }
}

fn supported(kind: AcceleratorKind) -> bool {
    matches!(
        kind,
        AcceleratorKind::None | AcceleratorKind::NvidiaGpu | AcceleratorKind::XilinxFpga
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_sizes_resolve_to_their_devices() {
        let a100 = lookup("Standard_NC24ads_A100_v4");
        assert_eq!(a100.accelerator, AcceleratorKind::NvidiaGpu);
        assert_eq!(a100.device_count, 1);
        assert_eq!(a100.device_memory_gib, Some(80.0));
        assert!(a100.supported);

        let nd = lookup("standard_nd96isr_h100_v5");
        assert_eq!((nd.device_count, nd.family), (8, "ND_H100_v5"));
        assert_eq!(lookup("NC6s_v3").device_model, Some("NVIDIA Tesla V100"));
        assert_eq!(lookup("Standard_NV6ads_A10_v5").note, FRACTIONAL);
    }

    #[test]
    fn amd_and_fpga_sizes_say_what_modelpod_does_with_them() {
        let amd = lookup("Standard_ND96isr_MI300X_v5");
        assert_eq!(amd.accelerator, AcceleratorKind::AmdGpu);
        assert!(!amd.supported);
        assert!(amd.note.unwrap().contains("CPU"));
        assert_eq!(
            lookup("Standard_NV32as_v4").accelerator,
            AcceleratorKind::AmdGpu
        );

        let np = lookup("Standard_NP20s");
        assert_eq!(np.accelerator, AcceleratorKind::XilinxFpga);
        assert_eq!((np.device_count, np.supported), (2, true));

        let pb = lookup("Standard_PB6s");
        assert_eq!(pb.accelerator, AcceleratorKind::IntelFpga);
        assert!(!pb.supported);
    }

    #[test]
    fn unknown_and_cpu_sizes_have_no_accelerator() {
        for size in ["Standard_D4s_v3", "Standard_F8s_v2", "", "not a size"] {
            let spec = lookup(size);
            assert_eq!(spec.accelerator, AcceleratorKind::None, "{size}");
            assert_eq!(spec.device_count, 0);
        }
    }

    #[test]
    fn every_row_is_unique_and_has_devices() {
        for (i, row) in TABLE.iter().enumerate() {
            assert!(row.4 >= 1 && row.5 > 0.0, "{}", row.0);
            assert!(
                TABLE[i + 1..].iter().all(|other| other.0 != row.0),
                "{} twice",
                row.0
            );
        }
    }
}
