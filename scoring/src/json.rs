//! JSON numbers to typed tensors and back: nested arrays (Azure `data`, v2 `data` in either
//! nested or flat form) to a flat buffer plus shape, checked to be rectangular.

use modelpod_accel::{DataType, Tensor, TensorData};
use serde_json::{Number, Value};

/// Flattens nested JSON arrays, returning the shape they describe and the leaves converted
/// to `dtype`. A bare scalar has shape `[]`. Ragged arrays, non-numbers and values that do
/// not fit `dtype` are errors naming the first offending position.
pub fn flatten(value: &Value, dtype: DataType) -> Result<(Vec<usize>, TensorData), String> {
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let count: usize = shape.iter().product();
    let mut leaves = Vec::with_capacity(count);
    collect_leaves(value, &shape, 0, &mut leaves)?;
    let data = convert(&leaves, dtype)?;
    Ok((shape, data))
}

fn collect_leaves<'v>(
    value: &'v Value,
    shape: &[usize],
    depth: usize,
    out: &mut Vec<&'v Value>,
) -> Result<(), String> {
    match (value, shape.get(depth)) {
        (Value::Array(items), Some(&len)) => {
            if items.len() != len {
                return Err(format!(
                    "ragged array: dimension {depth} has {} elements where {len} were expected",
                    items.len()
                ));
            }
            for item in items {
                collect_leaves(item, shape, depth + 1, out)?;
            }
            Ok(())
        }
        (Value::Array(_), None) => {
            Err(format!("ragged array: unexpected nesting at depth {depth}"))
        }
        (leaf, None) => {
            out.push(leaf);
            Ok(())
        }
        (_, Some(_)) => Err(format!(
            "ragged array: a scalar at depth {depth} where an array was expected"
        )),
    }
}

fn convert(leaves: &[&Value], dtype: DataType) -> Result<TensorData, String> {
    fn bad(i: usize, v: &Value, dtype: DataType) -> String {
        let shown = v.to_string();
        let shown = if shown.len() > 40 {
            format!("{}...", &shown[..40])
        } else {
            shown
        };
        format!("element {i} ({shown}) is not a valid {dtype} value")
    }
    macro_rules! ints {
        ($t:ty, $var:ident) => {
            TensorData::$var(
                leaves
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        int_of(v)
                            .and_then(|x| <$t>::try_from(x).ok())
                            .ok_or_else(|| bad(i, v, dtype))
                    })
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(
            leaves
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Bool(b) => Ok(*b),
                    Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
                    Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
                    _ => Err(bad(i, v, dtype)),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => ints!(u8, Uint8),
        DataType::Uint16 => ints!(u16, Uint16),
        DataType::Uint32 => ints!(u32, Uint32),
        DataType::Uint64 => ints!(u64, Uint64),
        DataType::Int8 => ints!(i8, Int8),
        DataType::Int16 => ints!(i16, Int16),
        DataType::Int32 => ints!(i32, Int32),
        DataType::Int64 => ints!(i64, Int64),
        DataType::Fp32 => TensorData::Fp32(
            leaves
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().map(|x| x as f32).ok_or_else(|| bad(i, v, dtype)))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Fp64 => TensorData::Fp64(
            leaves
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, v, dtype)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// An integer JSON number as i128 (so u64 and i64 both fit); floats with no fractional part
/// are accepted, as Python clients often send `1.0` for 1.
fn int_of(v: &Value) -> Option<i128> {
    let Value::Number(n) = v else { return None };
    if let Some(i) = n.as_i64() {
        return Some(i as i128);
    }
    if let Some(u) = n.as_u64() {
        return Some(u as i128);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i128)
}

/// The tensor's elements as one flat JSON array (the v2 form).
pub fn to_flat_json(data: &TensorData) -> Value {
    Value::Array(leaf_values(data))
}

/// The tensor as nested JSON arrays following its shape (the Azure form).
pub fn to_nested_json(tensor: &Tensor) -> Value {
    let leaves = leaf_values(tensor.data());
    nest(&mut leaves.into_iter(), tensor.shape())
}

/// Builds nested arrays of `shape` from a flat iterator of values.
pub fn nest(leaves: &mut impl Iterator<Item = Value>, shape: &[usize]) -> Value {
    match shape.split_first() {
        None => leaves.next().unwrap_or(Value::Null),
        Some((&len, rest)) => Value::Array((0..len).map(|_| nest(leaves, rest)).collect()),
    }
}

fn leaf_values(data: &TensorData) -> Vec<Value> {
    fn float(x: f64) -> Value {
        // JSON has no NaN or infinity; null is what serde_json and Python's strict encoders write.
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
    match data {
        TensorData::Bool(v) => v.iter().map(|&b| Value::Bool(b)).collect(),
        TensorData::Fp32(v) => v.iter().map(|&x| float(x as f64)).collect(),
        TensorData::Fp64(v) => v.iter().map(|&x| float(x)).collect(),
        other => {
            modelpod_accel::with_tensor_data!(other, v => v.iter().map(|&x| Value::from(x)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_nested_arrays_with_their_shape() {
        let (shape, data) = flatten(&json!([[1, 2, 3], [4, 5, 6]]), DataType::Fp32).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data, TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let (shape, data) = flatten(&json!(7), DataType::Int64).unwrap();
        assert!(shape.is_empty());
        assert_eq!(data, TensorData::Int64(vec![7]));
        let (shape, _) = flatten(&json!([]), DataType::Fp32).unwrap();
        assert_eq!(shape, vec![0]);
    }

    #[test]
    fn refuses_ragged_and_mistyped_arrays() {
        assert!(
            flatten(&json!([[1, 2], [3]]), DataType::Fp32)
                .unwrap_err()
                .contains("ragged")
        );
        assert!(
            flatten(&json!([[1, 2], 3]), DataType::Fp32)
                .unwrap_err()
                .contains("ragged")
        );
        assert!(
            flatten(&json!([1, [2]]), DataType::Fp32)
                .unwrap_err()
                .contains("ragged")
        );
        assert!(
            flatten(&json!(["a"]), DataType::Fp32)
                .unwrap_err()
                .contains("not a valid FP32")
        );
        assert!(flatten(&json!([1.5]), DataType::Int64).is_err());
        assert!(flatten(&json!([300]), DataType::Uint8).is_err());
        assert!(flatten(&json!([-1]), DataType::Uint32).is_err());
        assert_eq!(
            flatten(&json!([2.0]), DataType::Int32).unwrap().1,
            TensorData::Int32(vec![2])
        );
        assert_eq!(
            flatten(&json!([true, 0]), DataType::Bool).unwrap().1,
            TensorData::Bool(vec![true, false])
        );
    }

    #[test]
    fn large_integers_keep_their_precision() {
        let big = i64::MAX - 1;
        assert_eq!(
            flatten(&json!([big]), DataType::Int64).unwrap().1,
            TensorData::Int64(vec![big])
        );
        assert_eq!(
            flatten(&json!([u64::MAX]), DataType::Uint64).unwrap().1,
            TensorData::Uint64(vec![u64::MAX])
        );
    }

    #[test]
    fn nested_output_follows_shape() {
        let t = Tensor::new(vec![2, 2], vec![1i32, 2, 3, 4]).unwrap();
        assert_eq!(to_nested_json(&t), json!([[1, 2], [3, 4]]));
        assert_eq!(to_flat_json(t.data()), json!([1, 2, 3, 4]));
        let nan = Tensor::new(vec![1], vec![f32::NAN]).unwrap();
        assert_eq!(to_nested_json(&nan), json!([null]));
    }
}
