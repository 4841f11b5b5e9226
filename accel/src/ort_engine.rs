//! ONNX Runtime through the `ort` crate, with the library loaded at run time.
//!
//! The library is found once per process (flag, `ORT_DYLIB_PATH`, then default locations)
//! and is never touched before it has loaded: `ort` panics on first use otherwise.

use crate::{
    Backend, EngineError, EngineKind, EngineOptions, LoadedModel, Signature, Tensor, TensorData,
};
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release modelpod is built against (`ort`'s `api-31`).
pub const ORT_VERSION: &str = "1.31.1";

const LIBRARY_NAME: &str = "libonnxruntime.so";

static ORT_RUNTIME: OnceLock<Result<OrtRuntime, String>> = OnceLock::new();

struct OrtRuntime {
    library: PathBuf,
    environment: ort::environment::Environment,
}

/// Where to look for `libonnxruntime.so`, in order: `explicit` (the `--ort-library` flag),
/// `ORT_DYLIB_PATH`, next to the executable, `../lib` beside it, `.modelpod/lib` in the
/// current directory or any parent (where `scripts/setup.sh` puts it), `/opt/modelpod/lib`.
pub fn ort_library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_path_buf()];
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(LIBRARY_NAME));
        candidates.push(dir.join("../lib").join(LIBRARY_NAME));
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(
            cwd.ancestors()
                .map(|d| d.join(".modelpod/lib").join(LIBRARY_NAME)),
        );
    }
    candidates.push(PathBuf::from("/opt/modelpod/lib").join(LIBRARY_NAME));
    candidates
}

/// Loads ONNX Runtime once for the process. Later calls return the first outcome, whatever
/// path they name.
pub fn init_ort(explicit: Option<&Path>) -> Result<PathBuf, EngineError> {
    ORT_RUNTIME
        .get_or_init(|| {
            let candidates = ort_library_candidates(explicit);
            let library = candidates
                .iter()
                .find(|p| p.is_file())
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{LIBRARY_NAME} not found (looked in {}); run scripts/setup.sh, pass \
                     --ort-library or set ORT_DYLIB_PATH",
                        candidates
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            let environment = ort::init_from(&library)
                .map_err(|e| format!("{}: {e}", library.display()))?
                .with_name("modelpod")
                .build()
                .map_err(|e| format!("{}: {e}", library.display()))?;
            tracing::info!(library = %library.display(), "loaded ONNX Runtime");
            Ok(OrtRuntime {
                library,
                environment,
            })
        })
        .as_ref()
        .map(|rt| rt.library.clone())
        .map_err(|e| EngineError::OrtUnavailable(e.clone()))
}

fn ort_environment() -> Result<&'static ort::environment::Environment, EngineError> {
    init_ort(None)?;
    match ORT_RUNTIME.get() {
        Some(Ok(rt)) => Ok(&rt.environment),
        _ => Err(EngineError::OrtUnavailable("not initialised".into())),
    }
}

/// Whether ONNX Runtime is usable, loading it from the default locations if nothing has yet.
pub fn ort_status() -> Result<(), EngineError> {
    init_ort(None).map(|_| ())
}

pub struct OrtModel {
    /// The file's bytes: every session is committed from memory, so the file is read once.
    bytes: Vec<u8>,
    signature: Signature,
    intra_op_threads: usize,
}

impl OrtModel {
    pub fn load(path: &Path, options: &EngineOptions) -> Result<OrtModel, EngineError> {
        init_ort(None)?;
        let bytes = std::fs::read(path).map_err(|e| EngineError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let signature = Signature::from_onnx_file(path)?;
        let model = OrtModel {
            bytes,
            signature,
            intra_op_threads: options.intra_op_threads.max(1),
        };
        // Build one session now so a model ONNX Runtime rejects fails at load, not at first request.
        model.session().map_err(|e| EngineError::Load {
            path: path.to_path_buf(),
            reason: format!("ONNX Runtime: {e}"),
        })?;
        Ok(model)
    }

    fn session(&self) -> Result<Session, ort::Error> {
        let environment = ort_environment().map_err(|e| ort::Error::new(e.to_string()))?;
        let mut builder = Session::builder(environment)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort::Error::<()>::from)?
            .with_intra_threads(self.intra_op_threads)
            .map_err(ort::Error::<()>::from)?
            .with_inter_threads(1)
            .map_err(ort::Error::<()>::from)?
            // Spinning threads would steal cores from the HTTP workers and other instances.
            .with_intra_op_spinning(false)
            .map_err(ort::Error::<()>::from)?;
        builder.commit_from_memory(&self.bytes)
    }
}

impl LoadedModel for OrtModel {
    fn engine(&self) -> EngineKind {
        EngineKind::Ort
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn instantiate(&self) -> Result<Box<dyn Backend>, EngineError> {
        let session = self
            .session()
            .map_err(|e| EngineError::Run(format!("ONNX Runtime session: {e}")))?;
        Ok(Box::new(OrtBackend {
            session,
            signature: self.signature.clone(),
        }))
    }
}

struct OrtBackend {
    session: Session,
    signature: Signature,
}

impl Backend for OrtBackend {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, EngineError> {
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (tensor, spec) in inputs.iter().zip(&self.signature.inputs) {
            let shape: Vec<i64> = tensor.shape().iter().map(|&d| d as i64).collect();
            let bad = |e: ort::Error| EngineError::BadInput {
                name: spec.name.clone(),
                reason: e.to_string(),
            };
            let value: SessionInputValue<'_> = crate::with_tensor_data!(tensor.data(), v => {
                TensorRef::from_array_view((shape, v.as_slice())).map_err(bad)?.into()
            });
            values.push((Cow::Borrowed(spec.name.as_str()), value));
        }
        let outputs = self
            .session
            .run(values)
            .map_err(|e| EngineError::Run(e.to_string()))?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs
                    .get(&spec.name)
                    .ok_or_else(|| EngineError::Run(format!("output '{}' missing", spec.name)))?;
                from_ort(value)
                    .map_err(|e| EngineError::Run(format!("output '{}': {e}", spec.name)))
            })
            .collect()
    }
}

fn from_ort(value: &DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err("not a tensor".into());
    };
    macro_rules! take {
        ($t:ty) => {{
            let (shape, data) = value
                .try_extract_tensor::<$t>()
                .map_err(|e| e.to_string())?;
            (
                shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                TensorData::from(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => take!(bool),
        TensorElementType::Uint8 => take!(u8),
        TensorElementType::Uint16 => take!(u16),
        TensorElementType::Uint32 => take!(u32),
        TensorElementType::Uint64 => take!(u64),
        TensorElementType::Int8 => take!(i8),
        TensorElementType::Int16 => take!(i16),
        TensorElementType::Int32 => take!(i32),
        TensorElementType::Int64 => take!(i64),
        TensorElementType::Float32 => take!(f32),
        TensorElementType::Float64 => take!(f64),
        other => return Err(format!("element type {other:?} is not served")),
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}
