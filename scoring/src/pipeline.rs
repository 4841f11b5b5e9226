//! The entry-script equivalent for Azure's `POST /score`: how `{"data": ...}` becomes input
//! tensors (with declared pre-processing) and how outputs become the JSON reply (with declared
//! post-processing). Compiled once per model version from its manifest and signature.

use crate::error::ScoringError;
use crate::json;
use crate::manifest::{PostStep, PreStep, ScoreSection};
use modelpod_accel::{DataType, MapKeys, Signature, Tensor, TensorData, TensorSpec};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// A tensor's JSON text as shape and typed values: text that is not JSON (nesting past
/// the parser's limit) is a bad request, JSON that is no tensor of `dtype` invalid input.
fn flatten(
    text: &RawValue,
    dtype: DataType,
    model_dtype: DataType,
    what: impl Fn() -> String,
) -> Result<(Vec<usize>, TensorData), ScoringError> {
    json::flatten_slice_as(text.get().as_bytes(), dtype, model_dtype).map_err(|e| match e {
        json::FlattenError::Syntax(e) => ScoringError::BadRequest(format!(
            "the request body is not valid JSON: {}: {e}",
            what()
        )),
        json::FlattenError::Content(e) => ScoringError::InvalidInput(format!("{}: {e}", what())),
    })
}

/// The `/score` reply: serialised from the output tensors' buffers, or the JSON a
/// post-processing step built (labels, top-k objects: small by nature).
pub enum Reply<'a> {
    Value(Value),
    Tensor(&'a Tensor),
    /// The tensor without its last dimension of 1.
    Squeezed(&'a Tensor),
    /// A ZipMap output: one `{key: value}` object per row.
    Maps(&'a Tensor, &'a MapKeys),
    /// Every output by name (ZipMap outputs as their rows' objects).
    Named(Vec<(&'a str, &'a Tensor, Option<&'a MapKeys>)>),
}

impl serde::Serialize for Reply<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Value(value) => value.serialize(serializer),
            Reply::Tensor(tensor) => json::NestedTensor(tensor).serialize(serializer),
            Reply::Squeezed(tensor) => json::SqueezedTensor(tensor).serialize(serializer),
            Reply::Maps(tensor, keys) => json::MapRows(tensor, keys).serialize(serializer),
            Reply::Named(outputs) => {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(outputs.len()))?;
                for (name, tensor, keys) in outputs {
                    match keys {
                        Some(keys) => map.serialize_entry(name, &json::MapRows(tensor, keys))?,
                        None => map.serialize_entry(name, &json::NestedTensor(tensor))?,
                    }
                }
                map.end()
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScorePipeline {
    inputs: Vec<TensorSpec>,
    /// Whether dimension 0 of every tensor is the batch (each `data` row is one request row).
    batched: bool,
    pre: Vec<PreStep>,
    outputs: Vec<TensorSpec>,
    /// Index of the one output returned, or all of them.
    selected_output: Option<usize>,
    post: Vec<CompiledPost>,
}

#[derive(Debug, Clone)]
enum CompiledPost {
    Softmax,
    Squeeze,
    Argmax(Option<Vec<String>>),
    Topk(usize, Option<Vec<String>>),
}

impl ScorePipeline {
    /// The class labels of model output `index`, if the manifest's post-processing gives it
    /// any (an argmax or topk step's labels, or a ZipMap's keys): what the v2 classification
    /// extension names classes with.
    pub fn labels(&self, index: usize) -> Option<&[String]> {
        if self.selected_output != Some(index) {
            return None;
        }
        self.post.iter().rev().find_map(|step| match step {
            CompiledPost::Argmax(labels) | CompiledPost::Topk(_, labels) => labels.as_deref(),
            CompiledPost::Softmax | CompiledPost::Squeeze => None,
        })
    }

    pub fn new(
        section: &ScoreSection,
        signature: &Signature,
        batched: bool,
        model_dir: &Path,
    ) -> Result<ScorePipeline, String> {
        if let Some(name) = &section.input {
            if signature.input(name).is_none() {
                return Err(format!("score.input '{name}' is not an input of the model"));
            }
            if signature.inputs.len() != 1 {
                return Err(format!(
                    "score.input names one input but the model has {}; send \"data\" as an object keyed by input name instead",
                    signature.inputs.len()
                ));
            }
        }
        if !section.pre.is_empty() && signature.inputs.len() != 1 {
            return Err("score.pre needs a model with exactly one input".into());
        }
        if let Some(input) = signature.inputs.first()
            && let Some(step) = section.pre.iter().find(|step| match step {
                PreStep::Reshape { .. } => false,
                PreStep::Cast { to } => input.dtype == DataType::Bytes || *to == DataType::Bytes,
                PreStep::Scale { .. } | PreStep::Normalize { .. } => input.dtype == DataType::Bytes,
            })
        {
            return Err(format!(
                "score.pre: {} does not apply to input \"{}\" of type {}: only reshape does to \
                 text",
                step.name(),
                input.name,
                input.dtype
            ));
        }
        let selected_output = match &section.output {
            Some(name) => Some(
                signature
                    .outputs
                    .iter()
                    .position(|o| &o.name == name)
                    .ok_or_else(|| {
                        format!("score.output '{name}' is not an output of the model")
                    })?,
            ),
            None if signature.outputs.len() == 1 => Some(0),
            None => None,
        };
        if !section.post.is_empty() && selected_output.is_none() {
            return Err("score.post needs one output: name it with score.output".into());
        }
        let mut post = Vec::new();
        if let Some(output) = selected_output.map(|i| &signature.outputs[i])
            && output.dtype == DataType::Bytes
            && let Some(step) = section
                .post
                .iter()
                .find(|step| !matches!(step, PostStep::Squeeze))
        {
            return Err(format!(
                "score.post: {} needs numbers, but output \"{}\" is text (BYTES): only \
                 squeeze applies to it",
                step.name(),
                output.name
            ));
        }
        // A ZipMap's keys are the labels of its columns unless a file says otherwise.
        let map_labels = || -> Option<Vec<String>> {
            let keys = signature.outputs[selected_output?].map_keys.as_ref()?;
            Some((0..keys.len()).filter_map(|i| keys.key(i)).collect())
        };
        let labels_for = |file: Option<&str>| -> Result<Option<Vec<String>>, String> {
            match file {
                Some(_) => read_labels(model_dir, file),
                None => Ok(map_labels()),
            }
        };
        for (i, step) in section.post.iter().enumerate() {
            let terminal = matches!(
                step,
                PostStep::Argmax { .. } | PostStep::Topk { .. } | PostStep::Squeeze
            );
            if terminal && i + 1 != section.post.len() {
                return Err(
                    "argmax, topk and squeeze must be the last post-processing step".into(),
                );
            }
            post.push(match step {
                PostStep::Softmax => CompiledPost::Softmax,
                PostStep::Squeeze => {
                    let output = &signature.outputs[selected_output.expect("checked above")];
                    if output.dims.last() != Some(&Some(1)) {
                        return Err(format!(
                            "squeeze drops a last dimension of 1, but output \"{}\" is {}",
                            output.name,
                            shape_text(&output.dims)
                        ));
                    }
                    CompiledPost::Squeeze
                }
                PostStep::Argmax { labels } => CompiledPost::Argmax(labels_for(labels.as_deref())?),
                PostStep::Topk { k, labels } => {
                    CompiledPost::Topk(*k, labels_for(labels.as_deref())?)
                }
            });
        }
        Ok(ScorePipeline {
            inputs: signature.inputs.clone(),
            batched,
            pre: section.pre.clone(),
            outputs: signature.outputs.clone(),
            selected_output,
            post,
        })
    }

    /// The dimensions of one row of `spec`: all but the batch dimension when batched.
    fn row_dims<'s>(&self, spec: &'s TensorSpec) -> &'s [Option<usize>] {
        if self.batched {
            spec.dims.get(1..).unwrap_or(&[])
        } else {
            &spec.dims
        }
    }

    /// What a caller should send, for swagger: one example row per input.
    pub fn example_request(&self) -> Value {
        let example = |spec: &TensorSpec, shape: &[usize]| {
            let data = TensorData::Fp64(vec![0.0; shape.iter().product()]).cast(spec.dtype);
            json::to_nested_json(&Tensor::new(shape.to_vec(), data).expect("shape matches"))
        };
        let row_shape = |spec: &TensorSpec| -> Vec<usize> {
            let mut shape: Vec<usize> =
                self.row_dims(spec).iter().map(|d| d.unwrap_or(1)).collect();
            if self.batched {
                shape.insert(0, 1);
            }
            shape
        };
        if self.inputs.len() == 1 {
            let spec = &self.inputs[0];
            let shape = match self.input_row_shape_before_pre() {
                Some(mut flat) => {
                    if self.batched {
                        flat.insert(0, 1);
                    }
                    flat
                }
                None => row_shape(spec),
            };
            json!({ "data": example(spec, &shape) })
        } else {
            let data: Map<String, Value> = self
                .inputs
                .iter()
                .map(|s| (s.name.clone(), example(s, &row_shape(s))))
                .collect();
            json!({ "data": data })
        }
    }

    /// What `/score` answers to [`ScorePipeline::example_request`], for swagger: the reply
    /// to one row of zeros, post-processing included (labels, top-k objects, a squeeze).
    pub fn example_reply(&self) -> Value {
        let outputs: Vec<Tensor> = self
            .outputs
            .iter()
            .map(|spec| {
                let mut shape: Vec<usize> =
                    self.row_dims(spec).iter().map(|d| d.unwrap_or(1)).collect();
                if self.batched {
                    shape.insert(0, 1);
                }
                let data = TensorData::Fp64(vec![0.0; shape.iter().product()]).cast(spec.dtype);
                Tensor::new(shape, data).expect("shape matches")
            })
            .collect();
        self.encode(&outputs)
            .ok()
            .and_then(|reply| serde_json::to_value(reply).ok())
            .unwrap_or(Value::Null)
    }

    /// The row shape callers send when a reshape step changes it: the element count of the
    /// model's row, flat.
    fn input_row_shape_before_pre(&self) -> Option<Vec<usize>> {
        if !self
            .pre
            .iter()
            .any(|p| matches!(p, PreStep::Reshape { .. }))
        {
            return None;
        }
        let dims = self.row_dims(&self.inputs[0]);
        Some(vec![dims.iter().map(|d| d.unwrap_or(1)).product()])
    }

    /// Decodes an Azure scoring body (`{"data": ...}`, other fields ignored) into input
    /// tensors in signature order, each parsed from its JSON text straight into its typed
    /// buffer: no JSON tree is built, so memory stays near the body's size.
    pub fn decode_json(&self, body: &[u8]) -> Result<Vec<Tensor>, ScoringError> {
        #[derive(serde::Deserialize)]
        struct AzureBody<'a> {
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        let not_an_object = || {
            ScoringError::BadRequest(
                "the request body must be a JSON object with a \"data\" field".into(),
            )
        };
        // serde would take `[x]` for the struct too; Azure's body is an object.
        let opens_object = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        let body: AzureBody = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => not_an_object(),
            _ => ScoringError::BadRequest(format!("the request body is not valid JSON: {e}")),
        })?;
        let data = body
            .data
            .filter(|_| opens_object)
            .ok_or_else(not_an_object)?;
        let columns = self.columns_from_records(data)?;
        let tensors = if self.inputs.len() == 1 {
            vec![self.decode_single(columns.first().map_or(data, |c| c))?]
        } else {
            let fields: BTreeMap<String, &RawValue> = if columns.is_empty() {
                serde_json::from_str(data.get()).map_err(|_| {
                    ScoringError::InvalidInput(format!(
                        "this model has {} inputs ({}): \"data\" must be an object keyed by input name, or a list of such objects, one per row",
                        self.inputs.len(),
                        self.input_names()
                    ))
                })?
            } else {
                self.inputs
                    .iter()
                    .map(|spec| spec.name.clone())
                    .zip(columns.iter().map(|c| &**c))
                    .collect()
            };
            if let Some(unknown) = fields
                .keys()
                .find(|k| !self.inputs.iter().any(|s| &s.name == *k))
            {
                return Err(ScoringError::InvalidInput(format!(
                    "\"{unknown}\" is not an input of this model (inputs: {})",
                    self.input_names()
                )));
            }
            self.inputs
                .iter()
                .map(|spec| {
                    let value = fields.get(&spec.name).ok_or_else(|| {
                        ScoringError::InvalidInput(format!(
                            "input \"{}\" is missing from \"data\"",
                            spec.name
                        ))
                    })?;
                    let (shape, values) = flatten(value, spec.dtype, spec.dtype, || {
                        format!("input \"{}\"", spec.name)
                    })?;
                    let tensor = Tensor::new(shape, values)?;
                    self.check_shape(spec, &tensor)?;
                    Ok(tensor)
                })
                .collect::<Result<Vec<_>, ScoringError>>()?
        };
        if self.batched {
            let rows = tensors[0].rows();
            if tensors.iter().any(|t| t.rows() != rows) {
                return Err(ScoringError::InvalidInput(
                    "every input must have the same number of rows".into(),
                ));
            }
        }
        Ok(tensors)
    }

    /// pandas' `records` form, what Azure's `PandasParameterType` takes: `"data"` as a list of
    /// row objects keyed by input name. Returns each input's rows as one JSON list, in
    /// signature order (none when `"data"` is not in that form). A scalar is the row of an
    /// input whose rows hold one element (a DataFrame column exported as `[N, 1]`).
    fn columns_from_records(&self, data: &RawValue) -> Result<Vec<Box<RawValue>>, ScoringError> {
        let mut text = data.get().trim_start().bytes();
        let opens_records =
            text.next() == Some(b'[') && text.find(|b| !b.is_ascii_whitespace()) == Some(b'{');
        if !opens_records {
            return Ok(Vec::new());
        }
        if !self.batched {
            return Err(ScoringError::InvalidInput(
                "\"data\" is a list of row objects, but this model has no batch dimension to \
                 put rows in"
                    .into(),
            ));
        }
        let records: Vec<BTreeMap<String, &RawValue>> =
            serde_json::from_str(data.get()).map_err(|e| {
                ScoringError::InvalidInput(format!(
                    "\"data\" must be a list of objects keyed by input name ({}): {e}",
                    self.input_names()
                ))
            })?;
        for (row, record) in records.iter().enumerate() {
            if let Some(unknown) = record
                .keys()
                .find(|k| !self.inputs.iter().any(|s| s.name == **k))
            {
                return Err(ScoringError::InvalidInput(format!(
                    "row {row}: \"{unknown}\" is not an input of this model (inputs: {})",
                    self.input_names()
                )));
            }
        }
        self.inputs
            .iter()
            .map(|spec| {
                let one_element = matches!(self.row_dims(spec), [None | Some(1)]);
                let mut column = String::from("[");
                for (row, record) in records.iter().enumerate() {
                    let value = record.get(spec.name.as_str()).ok_or_else(|| {
                        ScoringError::InvalidInput(format!(
                            "row {row}: input \"{}\" is missing",
                            spec.name
                        ))
                    })?;
                    if row > 0 {
                        column.push(',');
                    }
                    let scalar = !value.get().starts_with('[');
                    if one_element && scalar {
                        column.push('[');
                        column.push_str(value.get());
                        column.push(']');
                    } else {
                        column.push_str(value.get());
                    }
                }
                column.push(']');
                RawValue::from_string(column)
                    .map_err(|e| ScoringError::BadRequest(format!("\"data\": {e}")))
            })
            .collect()
    }

    fn decode_single(&self, data: &RawValue) -> Result<Tensor, ScoringError> {
        let spec = &self.inputs[0];
        // Parse straight into the model's type unless arithmetic comes first.
        let parse_as = match self.pre.first() {
            Some(PreStep::Cast { to }) => *to,
            _ if self
                .pre
                .iter()
                .any(|p| matches!(p, PreStep::Scale { .. } | PreStep::Normalize { .. })) =>
            {
                DataType::Fp64
            }
            _ => spec.dtype,
        };
        // Errors name what the caller sends: the cast's type, else the model's (never the
        // FP64 that arithmetic is done in).
        let shown = match self.pre.first() {
            Some(PreStep::Cast { to }) => *to,
            _ => spec.dtype,
        };
        let (shape, values) = flatten(data, parse_as, shown, || "\"data\"".to_string())?;
        if self.batched && shape.is_empty() {
            return Err(ScoringError::InvalidInput(format!(
                "\"data\" must be a list of rows, each of shape {}",
                shape_text(self.row_dims(spec))
            )));
        }
        let mut tensor = Tensor::new(shape, values)?;
        for step in &self.pre {
            tensor = self.apply_pre(step, tensor)?;
        }
        if tensor.dtype() != spec.dtype {
            let (shape, data) = tensor.into_parts();
            tensor = Tensor::new(shape, data.cast(spec.dtype))?;
        }
        self.check_shape(spec, &tensor)?;
        Ok(tensor)
    }

    fn apply_pre(&self, step: &PreStep, tensor: Tensor) -> Result<Tensor, ScoringError> {
        let lead = usize::from(self.batched);
        Ok(match step {
            PreStep::Cast { to } => {
                let (shape, data) = tensor.into_parts();
                Tensor::new(shape, data.cast(*to))?
            }
            PreStep::Reshape { shape } => {
                let mut full: Vec<usize> = tensor.shape()[..lead].to_vec();
                full.extend_from_slice(shape);
                if full.iter().product::<usize>() != tensor.len() {
                    let row: usize = tensor.shape()[lead..].iter().product();
                    return Err(ScoringError::InvalidInput(format!(
                        "each row of \"data\" must hold {} values to become {}; got {row}",
                        shape.iter().product::<usize>(),
                        shape_text(&shape.iter().map(|&d| Some(d)).collect::<Vec<_>>())
                    )));
                }
                tensor.reshaped(full)?
            }
            PreStep::Scale { factor, offset } => {
                let (shape, data) = tensor.into_parts();
                let scaled: Vec<f64> = data
                    .to_f64_vec()
                    .into_iter()
                    .map(|x| x * factor + offset)
                    .collect();
                Tensor::new(shape, scaled)?
            }
            PreStep::Normalize { mean, std } => {
                let row_shape = tensor.shape()[lead..].to_vec();
                let channels = mean.len();
                if channels > 1 && row_shape.first() != Some(&channels) {
                    return Err(ScoringError::InvalidInput(format!(
                        "normalize expects {channels} channels on the first axis of each row, got row shape {row_shape:?}"
                    )));
                }
                let per_channel: usize = row_shape.iter().skip(1).product::<usize>().max(1);
                let (shape, data) = tensor.into_parts();
                let mut values = data.to_f64_vec();
                for (i, x) in values.iter_mut().enumerate() {
                    let c = if channels == 1 {
                        0
                    } else {
                        (i / per_channel) % channels
                    };
                    *x = (*x - mean[c]) / std[c];
                }
                Tensor::new(shape, values)?
            }
        })
    }

    fn check_shape(&self, spec: &TensorSpec, tensor: &Tensor) -> Result<(), ScoringError> {
        if spec.dims.is_empty() && tensor.shape().len() <= 1 {
            return Ok(());
        }
        if !spec.accepts_shape(tensor.shape()) {
            let expected = if self.batched {
                format!(
                    "a list of rows, each of shape {}",
                    shape_text(self.row_dims(spec))
                )
            } else {
                format!("shape {}", shape_text(&spec.dims))
            };
            return Err(ScoringError::InvalidInput(format!(
                "input \"{}\" has shape {:?}; expected {expected}",
                spec.name,
                tensor.shape()
            )));
        }
        Ok(())
    }

    fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Encodes model outputs (signature order) as the `/score` reply.
    pub fn encode<'a>(&'a self, outputs: &'a [Tensor]) -> Result<Reply<'a>, ScoringError> {
        match self.selected_output {
            Some(i) => {
                let tensor = outputs
                    .get(i)
                    .ok_or_else(|| ScoringError::Engine(format!("output {i} missing")))?;
                let keys = self.outputs[i].map_keys.as_ref();
                match (self.post.as_slice(), keys) {
                    ([], Some(keys)) => return Ok(Reply::Maps(tensor, keys)),
                    ([], None) => return Ok(Reply::Tensor(tensor)),
                    ([CompiledPost::Squeeze], _) => return Ok(Reply::Squeezed(tensor)),
                    _ => {}
                }
                Ok(Reply::Value(self.post_process(tensor, keys)))
            }
            None => Ok(Reply::Named(
                self.outputs
                    .iter()
                    .zip(outputs)
                    .map(|(spec, t)| (spec.name.as_str(), t, spec.map_keys.as_ref()))
                    .collect(),
            )),
        }
    }

    fn post_process(&self, tensor: &Tensor, keys: Option<&MapKeys>) -> Value {
        let shape = tensor.shape();
        let classes = shape.last().copied().unwrap_or(1).max(1);
        let mut values = tensor.data().to_f64_vec();
        let mut results: Vec<Value> = Vec::new();
        let mut terminal = false;
        let mut out_shape = shape;
        for step in &self.post {
            match step {
                CompiledPost::Softmax => values.chunks_mut(classes).for_each(softmax),
                CompiledPost::Squeeze => out_shape = json::squeezed(shape),
                CompiledPost::Argmax(labels) => {
                    terminal = true;
                    results = values
                        .chunks(classes)
                        .map(|row| class_value(argmax(row), labels.as_deref()))
                        .collect();
                }
                CompiledPost::Topk(k, labels) => {
                    terminal = true;
                    results = values
                        .chunks(classes)
                        .map(|row| {
                            let mut order: Vec<usize> = (0..row.len()).collect();
                            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                            Value::Array(
                                order
                                    .into_iter()
                                    .take(*k)
                                    .map(|i| {
                                        let mut entry = json!({ "index": i, "score": row[i] });
                                        if let Some(label) = labels.as_ref().and_then(|l| l.get(i))
                                        {
                                            entry["label"] = Value::String(label.clone());
                                        }
                                        entry
                                    })
                                    .collect(),
                            )
                        })
                        .collect();
                }
            }
        }
        if terminal {
            let outer = &shape[..shape.len().saturating_sub(1)];
            json::nest(&mut results.into_iter(), outer)
        } else {
            let data = TensorData::Fp64(values).cast(if tensor.dtype().is_float() {
                tensor.dtype()
            } else {
                DataType::Fp64
            });
            let tensor = Tensor::new(out_shape.to_vec(), data).expect("same element count");
            match keys {
                Some(keys) => serde_json::to_value(json::MapRows(&tensor, keys))
                    .expect("numbers and keys serialise"),
                None => json::to_nested_json(&tensor),
            }
        }
    }
}

fn softmax(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i)
}

fn class_value(index: usize, labels: Option<&[String]>) -> Value {
    match labels.and_then(|l| l.get(index)) {
        Some(label) => Value::String(label.clone()),
        None => Value::from(index),
    }
}

fn read_labels(model_dir: &Path, file: Option<&str>) -> Result<Option<Vec<String>>, String> {
    let Some(file) = file else { return Ok(None) };
    let path = model_dir.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("labels file {}: {e}", path.display()))?;
    Ok(Some(
        text.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    ))
}

/// A shape as users read it, with `-1` for dynamic dimensions: `[-1, 3, 224, 224]`.
pub fn shape_text(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("-1".into(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ScorePipeline {
        fn decode(&self, body: &Value) -> Result<Vec<Tensor>, ScoringError> {
            self.decode_json(&serde_json::to_vec(body).unwrap())
        }
    }

    fn encoded(reply: Reply<'_>) -> Value {
        serde_json::to_value(reply).unwrap()
    }

    fn spec(name: &str, dtype: DataType, dims: &[Option<usize>]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            dims: dims.to_vec(),
            map_keys: None,
        }
    }

    fn image_signature() -> Signature {
        Signature {
            inputs: vec![spec("image", DataType::Fp32, &[None, Some(2), Some(2)])],
            outputs: vec![spec("scores", DataType::Fp32, &[None, Some(3)])],
        }
    }

    #[test]
    fn pre_steps_reshape_scale_and_normalize_each_row() {
        let section: ScoreSection = toml::from_str(
            r#"pre = [{ op = "reshape", shape = [2, 2] }, { op = "scale", factor = 0.5 },
                      { op = "normalize", mean = [1.0, 0.0], std = [1.0, 2.0] }]"#,
        )
        .unwrap();
        let p = ScorePipeline::new(&section, &image_signature(), true, Path::new(".")).unwrap();
        let tensors = p
            .decode(&json!({"data": [[2, 4, 6, 8], [0, 0, 0, 0]]}))
            .unwrap();
        assert_eq!(tensors[0].shape(), &[2, 2, 2]);
        assert_eq!(
            tensors[0].data(),
            &TensorData::Fp32(vec![0.0, 1.0, 1.5, 2.0, -1.0, -1.0, 0.0, 0.0])
        );
        let err = p.decode(&json!({"data": [[1, 2, 3]]})).unwrap_err();
        assert!(matches!(err, ScoringError::InvalidInput(m) if m.contains("4 values")));
    }

    #[test]
    fn wrong_shape_names_the_expected_one() {
        let p = ScorePipeline::new(
            &ScoreSection::default(),
            &image_signature(),
            true,
            Path::new("."),
        )
        .unwrap();
        let err = p.decode(&json!({"data": [[1, 2, 3]]})).unwrap_err();
        assert!(
            matches!(&err, ScoringError::InvalidInput(m) if m.contains("[2, 2]")),
            "{err}"
        );
        assert!(matches!(
            p.decode(&json!({"rows": []})),
            Err(ScoringError::BadRequest(_))
        ));
        assert!(matches!(
            p.decode(&json!([1])),
            Err(ScoringError::BadRequest(_))
        ));
        assert!(matches!(
            p.decode(&json!({"data": 3})),
            Err(ScoringError::InvalidInput(_))
        ));
    }

    #[test]
    fn post_steps_softmax_argmax_and_topk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("labels.txt"), "cat\ndog\nfish\n").unwrap();
        let scores = Tensor::new(vec![2, 3], vec![0.0f32, 2.0, 1.0, 5.0, 0.0, 0.0]).unwrap();
        let section: ScoreSection = toml::from_str(
            r#"post = [{ op = "softmax" }, { op = "argmax", labels = "labels.txt" }]"#,
        )
        .unwrap();
        let p = ScorePipeline::new(&section, &image_signature(), true, dir.path()).unwrap();
        assert_eq!(
            encoded(p.encode(std::slice::from_ref(&scores)).unwrap()),
            json!(["dog", "cat"])
        );
        let section: ScoreSection = toml::from_str(r#"post = [{ op = "topk", k = 2 }]"#).unwrap();
        let p = ScorePipeline::new(&section, &image_signature(), true, dir.path()).unwrap();
        let out = encoded(p.encode(&[scores]).unwrap());
        assert_eq!(out[0][0]["index"], json!(1));
        assert_eq!(out[0][1]["index"], json!(2));
        assert_eq!(out[1].as_array().unwrap().len(), 2);
    }

    fn regressor_signature() -> Signature {
        Signature {
            inputs: vec![spec("x", DataType::Fp32, &[None, Some(2)])],
            outputs: vec![spec("variable", DataType::Fp32, &[None, Some(1)])],
        }
    }

    #[test]
    fn squeeze_answers_a_regressor_as_a_flat_list() {
        let section: ScoreSection = toml::from_str(r#"post = [{ op = "squeeze" }]"#).unwrap();
        let p = ScorePipeline::new(&section, &regressor_signature(), true, Path::new(".")).unwrap();
        let predictions = Tensor::new(vec![3, 1], vec![198.95f32, 1.5, -2.0]).unwrap();
        assert_eq!(
            encoded(p.encode(std::slice::from_ref(&predictions)).unwrap()),
            json!([198.95f32, 1.5, -2.0])
        );
        // Without it, the model's own shape.
        let plain = ScorePipeline::new(
            &ScoreSection::default(),
            &regressor_signature(),
            true,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            encoded(plain.encode(&[predictions]).unwrap()),
            json!([[198.95f32], [1.5], [-2.0]])
        );
        // Only a last dimension of 1 can go, and only as the last step.
        let err =
            ScorePipeline::new(&section, &image_signature(), true, Path::new(".")).unwrap_err();
        assert!(err.contains("\"scores\""), "{err}");
        let section: ScoreSection =
            toml::from_str(r#"post = [{ op = "squeeze" }, { op = "softmax" }]"#).unwrap();
        assert!(
            ScorePipeline::new(&section, &regressor_signature(), true, Path::new(".")).is_err()
        );
    }

    #[test]
    fn type_errors_name_the_models_type_not_the_arithmetics() {
        let section: ScoreSection =
            toml::from_str(r#"pre = [{ op = "scale", factor = 0.5 }]"#).unwrap();
        let p = ScorePipeline::new(&section, &regressor_signature(), true, Path::new(".")).unwrap();
        let err = p
            .decode(&json!({"data": [[1, "two"]]}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FP32") && !err.contains("FP64"), "{err}");
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut row = [1.0, 2.0, 3.0, 1000.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(row[3] > 0.99);
    }

    #[test]
    fn invalid_manifests_are_refused_at_load() {
        let section: ScoreSection =
            toml::from_str(r#"post = [{ op = "argmax" }, { op = "softmax" }]"#).unwrap();
        assert!(ScorePipeline::new(&section, &image_signature(), true, Path::new(".")).is_err());
        let section: ScoreSection = toml::from_str(r#"input = "nope""#).unwrap();
        assert!(ScorePipeline::new(&section, &image_signature(), true, Path::new(".")).is_err());
        let section: ScoreSection =
            toml::from_str(r#"post = [{ op = "topk", k = 1, labels = "missing.txt" }]"#).unwrap();
        assert!(
            ScorePipeline::new(
                &section,
                &image_signature(),
                true,
                Path::new("/nonexistent")
            )
            .is_err()
        );
    }

    #[test]
    fn several_inputs_come_as_an_object() {
        let sig = Signature {
            inputs: vec![
                spec("a", DataType::Fp32, &[None, Some(2)]),
                spec("b", DataType::Int64, &[None, Some(1)]),
            ],
            outputs: vec![
                spec("y", DataType::Fp32, &[None, Some(2)]),
                spec("z", DataType::Fp32, &[None, Some(2)]),
            ],
        };
        let p = ScorePipeline::new(&ScoreSection::default(), &sig, true, Path::new(".")).unwrap();
        let t = p
            .decode(&json!({"data": {"a": [[1, 2]], "b": [[3]]}}))
            .unwrap();
        assert_eq!(t[1].data(), &TensorData::Int64(vec![3]));
        assert!(p.decode(&json!({"data": {"a": [[1, 2]]}})).is_err());
        assert!(
            p.decode(&json!({"data": {"a": [[1, 2]], "b": [[3], [4]]}}))
                .is_err()
        );
        assert!(
            p.decode(&json!({"data": {"a": [[1, 2]], "b": [[3]], "c": 1}}))
                .is_err()
        );
        let y = Tensor::new(vec![1, 2], vec![1f32, 2.0]).unwrap();
        let out = encoded(p.encode(&[y.clone(), y]).unwrap());
        assert_eq!(out, json!({"y": [[1.0, 2.0]], "z": [[1.0, 2.0]]}));
    }

    #[test]
    fn several_inputs_come_as_pandas_records() {
        let sig = Signature {
            inputs: vec![
                spec("age", DataType::Int64, &[None, Some(1)]),
                spec("city", DataType::Bytes, &[None, Some(1)]),
                spec("pair", DataType::Fp32, &[None, Some(2)]),
            ],
            outputs: vec![spec("y", DataType::Fp32, &[None, Some(1)])],
        };
        let p = ScorePipeline::new(&ScoreSection::default(), &sig, true, Path::new(".")).unwrap();
        let t = p
            .decode(&json!({"data": [
                {"age": 30, "city": "Paris", "pair": [1, 2]},
                {"pair": [3, 4], "city": "Lyon", "age": [41]},
            ]}))
            .unwrap();
        assert_eq!(t[0].shape(), &[2, 1]);
        assert_eq!(t[0].data(), &TensorData::Int64(vec![30, 41]));
        assert_eq!(
            t[1].data(),
            &TensorData::Bytes(vec!["Paris".into(), "Lyon".into()])
        );
        assert_eq!(t[2].data(), &TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0]));
        let refused = |body: Value, says: &str| {
            let e = p.decode(&body).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        };
        refused(
            json!({"data": [{"age": 1, "city": "Nice", "pair": [1, 2]}, {"age": 2, "pair": [1, 2]}]}),
            "row 1: input \"city\" is missing",
        );
        refused(
            json!({"data": [{"age": 1, "city": "Nice", "pair": [1, 2], "zip": 1}]}),
            "row 0: \"zip\" is not an input",
        );
        refused(
            json!({"data": [{"age": "old", "city": "Nice", "pair": [1, 2]}]}),
            "INT64",
        );
        refused(json!({"data": [{"age": 1}, 3]}), "list of objects");
        // One input fed by records works too, as a one-column DataFrame does.
        let one = Signature {
            inputs: vec![spec("age", DataType::Fp32, &[None, Some(1)])],
            outputs: vec![spec("y", DataType::Fp32, &[None, Some(1)])],
        };
        let p = ScorePipeline::new(&ScoreSection::default(), &one, true, Path::new(".")).unwrap();
        let t = p
            .decode(&json!({"data": [{"age": 3}, {"age": 4.5}]}))
            .unwrap();
        assert_eq!(t[0].data(), &TensorData::Fp32(vec![3.0, 4.5]));
    }
}
