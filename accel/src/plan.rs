//! The engine plan: which engines, on which devices, a node offers, best first, from what its
//! VM size promises and what the probes really found. A model's manifest then narrows it (an
//! engine, a device kind, a set of GPUs), and the registry tries what is left in order.
//!
//! The probes are the truth: a GPU found on a VM size the table does not know is used, and a
//! GPU the VM size promises but the driver does not show is a loud mismatch, never a guess.

use crate::probe::{CudaDevice, Probe};
use crate::sku::{AcceleratorKind, SkuSpec};
use crate::{Device, DeviceKind, EngineChoice, EngineError, EngineFamily, EngineKind};
use serde::Serialize;

/// One engine and the devices its instances are spread over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub engine: EngineKind,
    #[serde(serialize_with = "serialize_devices")]
    pub devices: Vec<Device>,
}

impl Candidate {
    fn new(engine: EngineKind, devices: Vec<Device>) -> Candidate {
        Candidate { engine, devices }
    }

    pub fn accelerated(&self) -> bool {
        self.engine.device_kind() != DeviceKind::Cpu
    }

    /// Whether the next candidate is tried after this one failed with `error`: after any
    /// failure of an accelerator engine, and after a CPU engine that cannot run here at all.
    /// A model's own failure on a CPU engine is final: another CPU engine would only hide it.
    pub fn falls_back_after(&self, error: &EngineError) -> bool {
        self.accelerated()
            || matches!(
                error,
                EngineError::Unavailable { .. } | EngineError::OrtUnavailable(_)
            )
    }
}

fn serialize_devices<S: serde::Serializer>(devices: &[Device], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(devices.iter().map(Device::to_string))
}

/// The node's engines, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnginePlan {
    pub candidates: Vec<Candidate>,
    /// The VM size promised an accelerator the probes did not find, or the reverse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    /// Accelerators present but not used, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What the plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    pub expected: Option<&'a SkuSpec>,
    pub cuda: &'a Probe<CudaDevice>,
    pub xilinx: &'a Probe<String>,
    /// Whether this build has ONNX Runtime's Vitis AI provider (cargo feature `vitis-ai`).
    pub vitis_ai_built: bool,
    /// `--require-accelerator`: on a node with an accelerator, no CPU engine is planned.
    pub require_accelerator: bool,
    /// Why ONNX Runtime cannot load here (the library tried and its error); its engines are
    /// then left out of the plan, which never lists an engine that cannot run.
    pub ort_unavailable: Option<&'a str>,
}

impl EnginePlan {
    /// ONNX Runtime then tract, on the CPU: the plan of a node without accelerators.
    pub fn cpu_only() -> EnginePlan {
        EnginePlan {
            candidates: cpu_candidates(),
            mismatch: None,
            notes: Vec::new(),
        }
    }

    /// ONNX Runtime TensorRT → ONNX Runtime CUDA → tract CUDA on NVIDIA GPUs, ONNX Runtime
    /// Vitis AI on Xilinx FPGAs, then ONNX Runtime → tract on the CPU.
    pub fn for_node(facts: NodeFacts<'_>) -> EnginePlan {
        let promised = facts
            .expected
            .map_or(AcceleratorKind::None, |s| s.accelerator);
        let mut candidates = Vec::new();
        let mut notes = Vec::new();

        let gpus: Vec<Device> = facts
            .cuda
            .devices
            .iter()
            .map(|d| Device::Cuda(d.ordinal))
            .collect();
        if !gpus.is_empty() {
            candidates.push(Candidate::new(EngineKind::OrtTensorrt, gpus.clone()));
            candidates.push(Candidate::new(EngineKind::OrtCuda, gpus.clone()));
            // tract's CUDA runtime drives the process's default device only.
            candidates.push(Candidate::new(EngineKind::TractCuda, vec![Device::Cuda(0)]));
        }

        let fpgas: Vec<Device> = (0..facts.xilinx.devices.len() as u32)
            .map(Device::Fpga)
            .collect();
        if !fpgas.is_empty() {
            if facts.vitis_ai_built {
                candidates.push(Candidate::new(EngineKind::OrtVitisai, fpgas));
            } else {
                notes.push(format!(
                    "{} Xilinx FPGA(s) found, but this build has no Vitis AI engine (cargo \
                     feature `vitis-ai`): models run on the CPU",
                    fpgas.len()
                ));
            }
        }
        match promised {
            AcceleratorKind::AmdGpu => notes.push(
                "AMD GPUs are promised, but modelpod has no ROCm or MIGraphX engine: models \
                 run on the CPU"
                    .into(),
            ),
            AcceleratorKind::IntelFpga => notes.push(
                "Intel Arria 10 FPGAs (PB series) are promised; modelpod has no engine for \
                 them: models run on the CPU"
                    .into(),
            ),
            _ => {}
        }

        let accelerated = !candidates.is_empty();
        if !(accelerated && facts.require_accelerator) {
            candidates.extend(cpu_candidates());
        }
        if let Some(reason) = facts.ort_unavailable {
            let before = candidates.len();
            candidates.retain(|c| c.engine.family() != EngineFamily::Ort);
            if candidates.len() < before {
                notes.push(format!(
                    "ONNX Runtime engines left out of the plan: {reason}"
                ));
            }
        }
        EnginePlan {
            candidates,
            mismatch: mismatch(promised, facts.cuda, facts.xilinx),
            notes,
        }
    }

    /// The engine names of the plan, best first (`ort-cuda`...).
    pub fn engine_names(&self) -> Vec<&'static str> {
        self.candidates.iter().map(|c| c.engine.as_str()).collect()
    }

    /// What a model asking for `choice`, pinned to `device` kind and to `gpus` (ordinals) when
    /// given, may be tried on, best first. Empty is an error that says what the node has.
    pub fn for_model(
        &self,
        choice: EngineChoice,
        device: Option<DeviceKind>,
        gpus: Option<&[u32]>,
    ) -> Result<Vec<Candidate>, String> {
        let chosen: Vec<Candidate> = self
            .candidates
            .iter()
            .filter(|c| choice.admits(c.engine))
            .filter(|c| device.is_none_or(|kind| c.engine.device_kind() == kind))
            .filter_map(|c| {
                let devices: Vec<Device> = c
                    .devices
                    .iter()
                    .copied()
                    .filter(|d| match (d, gpus) {
                        (Device::Cuda(n), Some(gpus)) => gpus.contains(n),
                        _ => true,
                    })
                    .collect();
                (!devices.is_empty()).then(|| Candidate::new(c.engine, devices))
            })
            .collect();
        if chosen.is_empty() {
            let mut asked = vec![format!("engine {choice}")];
            if let Some(kind) = device {
                asked.push(format!("device {kind}"));
            }
            if let Some(gpus) = gpus {
                asked.push(format!("gpus {gpus:?}"));
            }
            return Err(format!(
                "this node offers no engine for {} (its plan: {}){}",
                asked.join(", "),
                self.describe(),
                self.mismatch
                    .as_deref()
                    .map(|m| format!("; {m}"))
                    .unwrap_or_default()
            ));
        }
        Ok(chosen)
    }

    /// `ort-cuda on cuda:0,cuda:1 > ort-cpu on cpu`.
    pub fn describe(&self) -> String {
        self.candidates
            .iter()
            .map(|c| {
                let devices: Vec<String> = c.devices.iter().map(Device::to_string).collect();
                format!("{} on {}", c.engine, devices.join(","))
            })
            .collect::<Vec<_>>()
            .join(" > ")
    }
}

fn cpu_candidates() -> Vec<Candidate> {
    vec![
        Candidate::new(EngineKind::OrtCpu, vec![Device::Cpu]),
        Candidate::new(EngineKind::TractCpu, vec![Device::Cpu]),
    ]
}

fn mismatch(
    promised: AcceleratorKind,
    cuda: &Probe<CudaDevice>,
    xilinx: &Probe<String>,
) -> Option<String> {
    match promised {
        AcceleratorKind::NvidiaGpu if cuda.devices.is_empty() => Some(format!(
            "the VM size promises NVIDIA GPUs but none was found: {}",
            cuda.unavailable
                .as_deref()
                .unwrap_or("the driver lists no device")
        )),
        AcceleratorKind::XilinxFpga if xilinx.devices.is_empty() => Some(format!(
            "the VM size promises Xilinx FPGAs but none was found: {}",
            xilinx.unavailable.as_deref().unwrap_or("no device")
        )),
        AcceleratorKind::None if !cuda.devices.is_empty() => Some(format!(
            "{} CUDA device(s) found on a VM size that promises none",
            cuda.devices.len()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sku::lookup;

    fn gpus(n: u32) -> Probe<CudaDevice> {
        Probe {
            devices: (0..n)
                .map(|ordinal| CudaDevice {
                    ordinal,
                    name: "NVIDIA A100 80GB PCIe".into(),
                    memory_bytes: 80 << 30,
                    compute_capability: (8, 0),
                })
                .collect(),
            unavailable: None,
        }
    }

    fn none<T>() -> Probe<T> {
        Probe {
            devices: Vec::new(),
            unavailable: Some("no device".into()),
        }
    }

    fn fpgas(n: usize) -> Probe<String> {
        Probe {
            devices: (0..n).map(|i| format!("/dev/xclmgmt{i}")).collect(),
            unavailable: None,
        }
    }

    fn facts<'a>(
        expected: Option<&'a SkuSpec>,
        cuda: &'a Probe<CudaDevice>,
        xilinx: &'a Probe<String>,
    ) -> NodeFacts<'a> {
        NodeFacts {
            expected,
            cuda,
            xilinx,
            vitis_ai_built: false,
            require_accelerator: false,
            ort_unavailable: None,
        }
    }

    #[test]
    fn nvidia_nodes_prefer_tensorrt_then_cuda_then_the_cpu() {
        let sku = lookup("Standard_NC48ads_A100_v4");
        let (cuda, xilinx) = (gpus(2), none());
        let plan = EnginePlan::for_node(facts(Some(&sku), &cuda, &xilinx));
        assert_eq!(
            plan.engine_names(),
            [
                "ort-tensorrt",
                "ort-cuda",
                "tract-cuda",
                "ort-cpu",
                "tract-cpu"
            ]
        );
        assert_eq!(
            plan.candidates[1].devices,
            [Device::Cuda(0), Device::Cuda(1)]
        );
        assert_eq!(plan.candidates[2].devices, [Device::Cuda(0)]);
        assert!(plan.mismatch.is_none());
    }

    #[test]
    fn a_gpu_sku_without_a_gpu_plans_the_cpu_and_says_so() {
        let sku = lookup("Standard_NC6s_v3");
        let (cuda, xilinx) = (none(), none());
        let plan = EnginePlan::for_node(facts(Some(&sku), &cuda, &xilinx));
        assert_eq!(plan.engine_names(), ["ort-cpu", "tract-cpu"]);
        assert!(plan.mismatch.unwrap().contains("promises NVIDIA GPUs"));
        // A GPU found on a VM size the table does not know is used, and named.
        let cuda = gpus(1);
        let plan = EnginePlan::for_node(facts(Some(&lookup("Standard_D4s_v3")), &cuda, &xilinx));
        assert_eq!(plan.engine_names()[1], "ort-cuda");
        assert!(plan.mismatch.unwrap().contains("promises none"));
    }

    #[test]
    fn fpga_nodes_use_vitis_ai_only_when_built_with_it_and_say_why_not() {
        let sku = lookup("Standard_NP10s");
        let (cuda, xilinx) = (none(), fpgas(1));
        let plan = EnginePlan::for_node(facts(Some(&sku), &cuda, &xilinx));
        assert_eq!(plan.engine_names(), ["ort-cpu", "tract-cpu"]);
        assert!(plan.notes[0].contains("vitis-ai"), "{:?}", plan.notes);
        let plan = EnginePlan::for_node(NodeFacts {
            vitis_ai_built: true,
            ..facts(Some(&sku), &cuda, &xilinx)
        });
        assert_eq!(plan.engine_names(), ["ort-vitisai", "ort-cpu", "tract-cpu"]);
        assert_eq!(plan.candidates[0].devices, [Device::Fpga(0)]);
        // Promised but absent: the CPU, and a mismatch.
        let absent = none();
        let plan = EnginePlan::for_node(NodeFacts {
            vitis_ai_built: true,
            ..facts(Some(&sku), &cuda, &absent)
        });
        assert_eq!(plan.engine_names(), ["ort-cpu", "tract-cpu"]);
        assert!(plan.mismatch.unwrap().contains("Xilinx"));
    }

    #[test]
    fn an_onnx_runtime_that_cannot_load_is_left_out_and_named() {
        let (cuda, xilinx) = (gpus(1), none());
        let reason = "/opt/modelpod/lib/libonnxruntime.so: wrong ELF class";
        let plan = EnginePlan::for_node(NodeFacts {
            ort_unavailable: Some(reason),
            ..facts(None, &cuda, &xilinx)
        });
        assert_eq!(plan.engine_names(), ["tract-cuda", "tract-cpu"]);
        assert!(!plan.describe().contains("ort-"), "{}", plan.describe());
        assert!(
            plan.notes.iter().any(|n| n.contains(reason)),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn requiring_the_accelerator_drops_the_cpu_only_where_there_is_one() {
        let (cuda, xilinx) = (gpus(1), none());
        let plan = EnginePlan::for_node(NodeFacts {
            require_accelerator: true,
            ..facts(None, &cuda, &xilinx)
        });
        assert_eq!(
            plan.engine_names(),
            ["ort-tensorrt", "ort-cuda", "tract-cuda"]
        );
        let cuda = none();
        let plan = EnginePlan::for_node(NodeFacts {
            require_accelerator: true,
            ..facts(None, &cuda, &xilinx)
        });
        assert_eq!(plan.engine_names(), ["ort-cpu", "tract-cpu"]);
    }

    #[test]
    fn only_accelerator_failures_and_unavailable_engines_fall_back() {
        let model_error = EngineError::Load {
            path: "m.onnx".into(),
            reason: "bad graph".into(),
        };
        let unavailable = EngineError::OrtUnavailable("no library".into());
        let cpu = Candidate::new(EngineKind::OrtCpu, vec![Device::Cpu]);
        let gpu = Candidate::new(EngineKind::OrtCuda, vec![Device::Cuda(0)]);
        assert!(!cpu.falls_back_after(&model_error));
        assert!(cpu.falls_back_after(&unavailable));
        assert!(gpu.falls_back_after(&model_error));
    }

    #[test]
    fn manifests_narrow_the_plan_by_engine_device_and_gpus() {
        let (cuda, xilinx) = (gpus(4), none());
        let plan = EnginePlan::for_node(facts(None, &cuda, &xilinx));
        let names = |c: Vec<Candidate>| c.iter().map(|c| c.engine.as_str()).collect::<Vec<_>>();
        assert_eq!(
            names(plan.for_model(EngineChoice::Tract, None, None).unwrap()),
            ["tract-cuda", "tract-cpu"]
        );
        assert_eq!(
            names(
                plan.for_model(EngineChoice::Auto, Some(DeviceKind::Cpu), None)
                    .unwrap()
            ),
            ["ort-cpu", "tract-cpu"]
        );
        let pinned = plan
            .for_model(
                EngineChoice::Exactly(EngineKind::OrtCuda),
                None,
                Some(&[1, 3]),
            )
            .unwrap();
        assert_eq!(pinned.len(), 1);
        assert_eq!(pinned[0].devices, [Device::Cuda(1), Device::Cuda(3)]);
        // tract-cuda drives cuda:0 only, so GPUs 1 and 3 leave it out.
        assert_eq!(
            names(
                plan.for_model(EngineChoice::Auto, Some(DeviceKind::Gpu), Some(&[1, 3]))
                    .unwrap()
            ),
            ["ort-tensorrt", "ort-cuda"]
        );
        // A CPU node cannot honour a GPU pin, and says what it has.
        let cpu = EnginePlan::cpu_only();
        let err = cpu
            .for_model(EngineChoice::Auto, Some(DeviceKind::Gpu), None)
            .unwrap_err();
        assert!(
            err.contains("device gpu") && err.contains("ort-cpu on cpu"),
            "{err}"
        );
        assert!(
            cpu.for_model(EngineChoice::Exactly(EngineKind::TractCuda), None, None)
                .is_err()
        );
    }
}
