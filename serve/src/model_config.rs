//! Triton's model configuration of a served model, built once as the protocol's
//! `inference.ModelConfig` message: the gRPC ModelConfig RPC answers it as it is, and the HTTP
//! config route renders it as Triton's JSON (enum names, numeric dims).

use modelpod_accel::{DataType, Device, DeviceKind, TensorSpec};
use modelpod_proto::inference::model_sequence_batching::{
    Control, ControlInput, StrategyChoice, StrategyDirect, StrategyOldest, control,
};
use modelpod_proto::inference::{
    DataType as TritonType, ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup,
    ModelOutput, ModelSequenceBatching, model_instance_group,
};
use modelpod_scoring::ServedModel;
use modelpod_scoring::manifest::SequenceStrategy;
use modelpod_scoring::sequence::SequenceBatcher;
use serde_json::{Value, json};

/// Triton's name for an element type (`TYPE_STRING` for BYTES).
pub(crate) fn triton_type(dtype: DataType) -> TritonType {
    match dtype {
        DataType::Bool => TritonType::TypeBool,
        DataType::Uint8 => TritonType::TypeUint8,
        DataType::Uint16 => TritonType::TypeUint16,
        DataType::Uint32 => TritonType::TypeUint32,
        DataType::Uint64 => TritonType::TypeUint64,
        DataType::Int8 => TritonType::TypeInt8,
        DataType::Int16 => TritonType::TypeInt16,
        DataType::Int32 => TritonType::TypeInt32,
        DataType::Int64 => TritonType::TypeInt64,
        DataType::Fp16 => TritonType::TypeFp16,
        DataType::Bf16 => TritonType::TypeBf16,
        DataType::Fp32 => TritonType::TypeFp32,
        DataType::Fp64 => TritonType::TypeFp64,
        DataType::Bytes => TritonType::TypeString,
    }
}

/// Config dims leave out the batch dimension when the model batches, as Triton's do.
fn config_dims(spec: &TensorSpec, batched: bool) -> Vec<i64> {
    let dims = spec.dims_i64();
    if batched && !dims.is_empty() {
        dims[1..].to_vec()
    } else {
        dims
    }
}

fn instance_kind(kind: DeviceKind) -> model_instance_group::Kind {
    match kind {
        DeviceKind::Cpu => model_instance_group::Kind::Cpu,
        DeviceKind::Gpu => model_instance_group::Kind::Gpu,
        // Triton has no FPGA kind; its "model" kind means the backend places instances.
        DeviceKind::Fpga => model_instance_group::Kind::Model,
    }
}

pub(crate) fn model_config(model: &ServedModel) -> ModelConfig {
    let batched = model.policy.batches();
    let gpus = model
        .devices
        .iter()
        .filter_map(|d| match d {
            Device::Cuda(n) => Some(*n as i32),
            _ => None,
        })
        .collect();
    ModelConfig {
        name: model.name.clone(),
        platform: model.engine.triton_platform().to_string(),
        backend: model.engine.as_str().to_string(),
        max_batch_size: model.policy.max_batch_size as i32,
        input: model
            .signature
            .inputs
            .iter()
            .map(|s| ModelInput {
                name: s.name.clone(),
                data_type: triton_type(s.dtype) as i32,
                dims: config_dims(s, batched),
                optional: false,
            })
            .collect(),
        output: model
            .signature
            .outputs
            .iter()
            .map(|s| ModelOutput {
                name: s.name.clone(),
                data_type: triton_type(s.dtype) as i32,
                dims: config_dims(s, batched),
                label_filename: String::new(),
            })
            .collect(),
        instance_group: vec![ModelInstanceGroup {
            name: format!("{}_0", model.name),
            count: model.instances as i32,
            gpus,
            kind: instance_kind(model.engine.device_kind()) as i32,
        }],
        sequence_batching: model.sequence_batcher().map(sequence_config),
        dynamic_batching: (batched && model.sequence_batcher().is_none()).then(|| {
            ModelDynamicBatching {
                preferred_batch_size: model
                    .policy
                    .preferred_batch_sizes
                    .iter()
                    .map(|&n| n as i32)
                    .collect(),
                max_queue_delay_microseconds: model.policy.max_queue_delay.as_micros() as u64,
            }
        }),
    }
}

/// A stateful model's sequence batcher as Triton describes one: its control inputs (false and
/// true as 0 and 1 in the input's type) and its strategy.
fn sequence_config(batcher: &SequenceBatcher) -> ModelSequenceBatching {
    let policy = batcher.policy();
    let delay = policy.max_queue_delay.as_micros() as u64;
    ModelSequenceBatching {
        max_sequence_idle_microseconds: policy.idle_timeout.as_micros() as u64,
        control_input: batcher
            .layout()
            .controls()
            .into_iter()
            .map(|(kind, spec)| {
                let mut entry = Control {
                    kind: match kind {
                        "start" => control::Kind::ControlSequenceStart,
                        "end" => control::Kind::ControlSequenceEnd,
                        "ready" => control::Kind::ControlSequenceReady,
                        _ => control::Kind::ControlSequenceCorrid,
                    } as i32,
                    ..Control::default()
                };
                match (kind, spec.dtype) {
                    ("correlation_id", dtype) => entry.data_type = triton_type(dtype) as i32,
                    (_, DataType::Bool) => entry.bool_false_true = vec![false, true],
                    (_, dtype) if dtype.is_float() => entry.fp32_false_true = vec![0.0, 1.0],
                    _ => entry.int32_false_true = vec![0, 1],
                }
                ControlInput {
                    name: spec.name.clone(),
                    control: vec![entry],
                }
            })
            .collect(),
        strategy_choice: Some(match policy.strategy {
            SequenceStrategy::Direct => StrategyChoice::Direct(StrategyDirect {
                max_queue_delay_microseconds: delay,
                minimum_slot_utilization: 0.0,
            }),
            SequenceStrategy::Oldest => StrategyChoice::Oldest(StrategyOldest {
                max_candidate_sequences: policy.slots_per_instance as i32,
                preferred_batch_size: policy
                    .preferred_batch_sizes
                    .iter()
                    .map(|&n| n as i32)
                    .collect(),
                max_queue_delay_microseconds: delay,
            }),
        }),
    }
}

fn sequence_json(config: &ModelSequenceBatching) -> Value {
    let controls: Vec<Value> = config
        .control_input
        .iter()
        .map(|input| {
            let control: Vec<Value> = input
                .control
                .iter()
                .map(|c| {
                    let kind = control::Kind::try_from(c.kind)
                        .unwrap_or(control::Kind::ControlSequenceStart);
                    let mut entry = json!({ "kind": kind.as_str_name() });
                    if !c.int32_false_true.is_empty() {
                        entry["int32_false_true"] = json!(c.int32_false_true);
                    }
                    if !c.fp32_false_true.is_empty() {
                        entry["fp32_false_true"] = json!(c.fp32_false_true);
                    }
                    if !c.bool_false_true.is_empty() {
                        entry["bool_false_true"] = json!(c.bool_false_true);
                    }
                    if c.data_type != 0 {
                        entry["data_type"] = json!(
                            TritonType::try_from(c.data_type)
                                .unwrap_or(TritonType::TypeInvalid)
                                .as_str_name()
                        );
                    }
                    entry
                })
                .collect();
            json!({ "name": input.name, "control": control })
        })
        .collect();
    let mut json = json!({
        "max_sequence_idle_microseconds": config.max_sequence_idle_microseconds,
        "control_input": controls,
    });
    match &config.strategy_choice {
        Some(StrategyChoice::Direct(direct)) => {
            json["direct"] = json!({
                "max_queue_delay_microseconds": direct.max_queue_delay_microseconds,
                "minimum_slot_utilization": direct.minimum_slot_utilization,
            });
        }
        Some(StrategyChoice::Oldest(oldest)) => {
            json["oldest"] = json!({
                "max_candidate_sequences": oldest.max_candidate_sequences,
                "preferred_batch_size": oldest.preferred_batch_size,
                "max_queue_delay_microseconds": oldest.max_queue_delay_microseconds,
            });
        }
        None => {}
    }
    json
}

/// The configuration as Triton's HTTP route writes it.
pub(crate) fn config_json(config: &ModelConfig) -> Value {
    let type_name = |code: i32| {
        TritonType::try_from(code)
            .unwrap_or(TritonType::TypeInvalid)
            .as_str_name()
    };
    let mut json = json!({
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": config.input.iter().map(|t| json!({
            "name": t.name, "data_type": type_name(t.data_type), "dims": t.dims,
        })).collect::<Vec<_>>(),
        "output": config.output.iter().map(|t| json!({
            "name": t.name, "data_type": type_name(t.data_type), "dims": t.dims,
        })).collect::<Vec<_>>(),
        "instance_group": config.instance_group.iter().map(|g| {
            let kind = model_instance_group::Kind::try_from(g.kind)
                .unwrap_or(model_instance_group::Kind::Auto);
            let mut group = json!({ "name": g.name, "kind": kind.as_str_name(), "count": g.count });
            if !g.gpus.is_empty() {
                group["gpus"] = json!(g.gpus);
            }
            group
        }).collect::<Vec<_>>(),
    });
    if let Some(batching) = &config.dynamic_batching {
        json["dynamic_batching"] = json!({
            "preferred_batch_size": batching.preferred_batch_size,
            "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        });
    }
    if let Some(sequence) = &config.sequence_batching {
        json["sequence_batching"] = sequence_json(sequence);
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datatype_has_tritons_name() {
        let names: Vec<&str> = DataType::ALL
            .iter()
            .map(|&d| triton_type(d).as_str_name())
            .collect();
        assert_eq!(
            names,
            [
                "TYPE_BOOL",
                "TYPE_UINT8",
                "TYPE_UINT16",
                "TYPE_UINT32",
                "TYPE_UINT64",
                "TYPE_INT8",
                "TYPE_INT16",
                "TYPE_INT32",
                "TYPE_INT64",
                "TYPE_FP16",
                "TYPE_BF16",
                "TYPE_FP32",
                "TYPE_FP64",
                "TYPE_STRING",
            ]
        );
    }
}
