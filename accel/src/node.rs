//! Which node this is: its Azure VM size (from, in order, the flag or `MODELPOD_NODE_SKU`, the
//! Kubernetes node's `node.kubernetes.io/instance-type` label, and Azure's instance metadata
//! service), what the SKU table expects of it, what the probes find, and the engine plan that
//! follows. `modelpod sku` prints all of it.

use crate::plan::{EnginePlan, NodeFacts};
use crate::probe::{self, CudaDevice, Probe};
use crate::sku::{AcceleratorKind, SkuSpec, lookup};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// The Kubernetes label that carries a node's VM size.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
/// Azure's instance metadata service, asked for the VM size as plain text.
pub const DEFAULT_IMDS_URL: &str =
    "http://169.254.169.254/metadata/instance/compute/vmSize?api-version=2021-02-01&format=text";

#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// The node's Azure VM size, e.g. Standard_NC6s_v3 (overrides every other source).
    #[arg(long, env = "MODELPOD_NODE_SKU")]
    pub node_sku: Option<String>,
    /// The node's instance-type label, as passed into the pod (e.g. by an init container).
    #[arg(long, env = "MODELPOD_NODE_INSTANCE_TYPE")]
    pub node_instance_type: Option<String>,
    /// A file of node labels in the downward API's `key="value"` lines; its
    /// node.kubernetes.io/instance-type is used.
    #[arg(long, env = "MODELPOD_NODE_LABELS_FILE")]
    pub node_labels_file: Option<PathBuf>,
    /// Ask Azure's instance metadata service when no other source names the VM size.
    #[arg(long, env = "MODELPOD_IMDS")]
    pub imds: bool,
    /// Instance metadata URL (tests point it at a loopback server).
    #[arg(long, env = "MODELPOD_IMDS_URL", default_value = DEFAULT_IMDS_URL)]
    pub imds_url: String,
    /// How long to wait for the instance metadata service, in milliseconds.
    #[arg(long, env = "MODELPOD_IMDS_TIMEOUT_MS", default_value_t = 500)]
    pub imds_timeout_ms: u64,
}

/// Where the VM size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkuSource {
    Flag,
    NodeLabel,
    LabelsFile,
    InstanceMetadata,
    Unknown,
}

/// The node's VM size and where it came from; the reasons other sources gave nothing are
/// kept for the report.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSku {
    pub vm_size: Option<String>,
    pub source: SkuSource,
    pub notes: Vec<String>,
}

impl NodeArgs {
    pub fn resolve(&self) -> NodeSku {
        let mut notes = Vec::new();
        let found = |vm_size: String, source| NodeSku {
            vm_size: Some(vm_size),
            source,
            notes: Vec::new(),
        };
        if let Some(sku) = non_empty(self.node_sku.as_deref()) {
            return found(sku, SkuSource::Flag);
        }
        if let Some(sku) = non_empty(self.node_instance_type.as_deref()) {
            return found(sku, SkuSource::NodeLabel);
        }
        if let Some(path) = &self.node_labels_file {
            match std::fs::read_to_string(path) {
                Ok(text) => match label_value(&text, INSTANCE_TYPE_LABEL) {
                    Some(sku) => return found(sku, SkuSource::LabelsFile),
                    None => notes.push(format!("{} has no {INSTANCE_TYPE_LABEL}", path.display())),
                },
                Err(e) => notes.push(format!("{}: {e}", path.display())),
            }
        }
        if self.imds {
            match imds_vm_size(&self.imds_url, Duration::from_millis(self.imds_timeout_ms)) {
                Ok(sku) => {
                    let mut node = found(sku, SkuSource::InstanceMetadata);
                    node.notes = notes;
                    return node;
                }
                Err(e) => notes.push(format!("instance metadata: {e}")),
            }
        }
        NodeSku {
            vm_size: None,
            source: SkuSource::Unknown,
            notes,
        }
    }
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// The value of `key` in downward-API label lines (`key="value"`).
fn label_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn imds_vm_size(url: &str, timeout: Duration) -> Result<String, String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .header("Metadata", "true")
        .send()
        .map_err(|e| format!("no answer from {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let text = response.text().map_err(|e| e.to_string())?;
    non_empty(Some(&text)).ok_or_else(|| format!("{url} answered an empty VM size"))
}

/// Everything `modelpod sku` reports.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: NodeSku,
    pub expected: Option<SkuSpec>,
    pub cuda: Probe<CudaDevice>,
    pub xilinx: Probe<String>,
    pub cpus: usize,
    pub plan: EnginePlan,
}

impl NodeReport {
    /// Resolves the VM size, runs the probes and plans the engines. `require_accelerator`
    /// leaves the CPU engines out of the plan of a node that has an accelerator.
    /// Probes the node. ONNX Runtime is loaded here if nothing loaded it yet (from
    /// `ort_library`, else the default locations), so the plan lists only engines that run.
    pub fn gather(
        args: &NodeArgs,
        require_accelerator: bool,
        ort_library: Option<&std::path::Path>,
    ) -> NodeReport {
        let ort = crate::ort_engine::init_ort(ort_library).map_err(|e| match e {
            crate::EngineError::OrtUnavailable(reason) => reason,
            other => other.to_string(),
        });
        let node = args.resolve();
        let expected = node.vm_size.as_deref().map(lookup);
        let cuda = probe::cuda_devices();
        let xilinx = probe::xilinx_devices(std::path::Path::new("/dev"));
        let plan = EnginePlan::for_node(NodeFacts {
            expected: expected.as_ref(),
            cuda: &cuda,
            xilinx: &xilinx,
            vitis_ai_built: crate::VITIS_AI_BUILT,
            require_accelerator,
            ort_unavailable: ort.as_ref().err().map(String::as_str),
        });
        NodeReport {
            node,
            expected,
            cuda,
            xilinx,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            plan,
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "VM size:   {} (from {:?})",
            self.node.vm_size.as_deref().unwrap_or("unknown"),
            self.node.source
        ));
        for note in &self.node.notes {
            line(format!("           {note}"));
        }
        match &self.expected {
            Some(spec) if spec.accelerator != AcceleratorKind::None => line(format!(
                "expected:  {} × {} ({} GiB each), family {}{}",
                spec.device_count,
                spec.device_model.unwrap_or("?"),
                spec.device_memory_gib.unwrap_or(0.0),
                spec.family,
                spec.note.map(|n| format!("; {n}")).unwrap_or_default()
            )),
            Some(_) => line("expected:  no accelerator".into()),
            None => line("expected:  nothing (VM size unknown)".into()),
        }
        match &self.cuda.unavailable {
            Some(why) => line(format!("CUDA:      none ({why})")),
            None => {
                for d in &self.cuda.devices {
                    line(format!(
                        "CUDA:      cuda:{} {} ({:.1} GiB, compute capability {}.{})",
                        d.ordinal,
                        d.name,
                        d.memory_bytes as f64 / (1u64 << 30) as f64,
                        d.compute_capability.0,
                        d.compute_capability.1
                    ));
                }
            }
        }
        match &self.xilinx.unavailable {
            Some(why) => line(format!("FPGA:      none ({why})")),
            None => line(format!("FPGA:      {}", self.xilinx.devices.join(", "))),
        }
        line(format!("CPUs:      {}", self.cpus));
        line(format!("engines:   {}", self.plan.describe()));
        for note in &self.plan.notes {
            line(format!("           {note}"));
        }
        if let Some(mismatch) = &self.plan.mismatch {
            line(format!("MISMATCH:  {mismatch}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn args() -> NodeArgs {
        NodeArgs {
            imds_url: DEFAULT_IMDS_URL.into(),
            imds_timeout_ms: 500,
            ..NodeArgs::default()
        }
    }

    /// A loopback server that answers one request as Azure's metadata service does, if the
    /// request carries `Metadata: true`; returns its URL.
    fn fake_imds(vm_size: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 2048];
            let n = stream.read(&mut request).unwrap();
            let request = String::from_utf8_lossy(&request[..n]).to_ascii_lowercase();
            let reply = if request.contains("metadata: true") {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{vm_size}",
                    vm_size.len()
                )
            } else {
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_string()
            };
            stream.write_all(reply.as_bytes()).unwrap();
        });
        format!(
            "http://{address}/metadata/instance/compute/vmSize?api-version=2021-02-01&format=text"
        )
    }

    #[test]
    fn sources_are_taken_in_order() {
        let labels = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            labels.path(),
            "kubernetes.io/os=\"linux\"\nnode.kubernetes.io/instance-type=\"Standard_NC24ads_A100_v4\"\n",
        )
        .unwrap();
        let mut a = args();
        a.node_labels_file = Some(labels.path().to_path_buf());
        let node = a.resolve();
        assert_eq!(node.vm_size.as_deref(), Some("Standard_NC24ads_A100_v4"));
        assert_eq!(node.source, SkuSource::LabelsFile);

        a.node_instance_type = Some("Standard_NP10s".into());
        assert_eq!(a.resolve().source, SkuSource::NodeLabel);
        a.node_sku = Some("Standard_D4s_v3".into());
        let node = a.resolve();
        assert_eq!(
            (node.vm_size.as_deref(), node.source),
            (Some("Standard_D4s_v3"), SkuSource::Flag)
        );
    }

    #[test]
    fn instance_metadata_is_asked_only_when_enabled_and_last() {
        let mut a = args();
        a.imds_url = fake_imds("Standard_NC6s_v3");
        assert_eq!(a.resolve().source, SkuSource::Unknown, "off by default");
        a.imds = true;
        let node = a.resolve();
        assert_eq!(node.vm_size.as_deref(), Some("Standard_NC6s_v3"));
        assert_eq!(node.source, SkuSource::InstanceMetadata);
    }

    #[test]
    fn an_unreachable_metadata_service_is_a_note_not_an_error() {
        let mut a = args();
        a.imds = true;
        // A port nothing listens on: refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        a.imds_url = format!("http://{closed}/metadata");
        let node = a.resolve();
        assert_eq!(node.source, SkuSource::Unknown);
        assert!(
            node.notes[0].contains("instance metadata"),
            "{:?}",
            node.notes
        );
    }
}
