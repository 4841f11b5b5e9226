//! JSON numbers to typed tensors and back: nested arrays (Azure `data`, v2 `data` in either
//! nested or flat form) to a flat buffer plus shape, checked to be rectangular.

mod scan;

use modelpod_accel::{DataType, MapKeys, Tensor, TensorData, bf16, f16};
use serde_json::{Number, Value};

/// Runs `$body` with `$v` bound to a slice of the elements of a [`TensorData`] as they go into
/// JSON: FP16 and BF16 widened to f32 (a JSON number; `half`'s own serde form is the raw
/// bits), every other type borrowed.
macro_rules! with_json_elements {
    ($data:expr, $v:ident => $body:expr) => {{
        let widened: Vec<f32>;
        match $data {
            TensorData::Fp16(h) => {
                widened = h.iter().map(|x| x.to_f32()).collect();
                let $v = widened.as_slice();
                $body
            }
            TensorData::Bf16(h) => {
                widened = h.iter().map(|x| x.to_f32()).collect();
                let $v = widened.as_slice();
                $body
            }
            TensorData::Bool(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Uint8(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Uint16(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Uint32(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Uint64(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Int8(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Int16(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Int32(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Int64(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Fp32(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Fp64(x) => {
                let $v = x.as_slice();
                $body
            }
            TensorData::Bytes(x) => {
                let $v = x.as_slice();
                $body
            }
        }
    }};
}

/// Flattens nested JSON arrays, returning the shape they describe and the leaves converted
/// to `dtype`. A bare scalar has shape `[]`. Ragged arrays, non-numbers and values that do
/// not fit `dtype` are errors naming the first offending position.
pub fn flatten(value: &Value, dtype: DataType) -> Result<(Vec<usize>, TensorData), String> {
    let mut flattener = Flattener::new(dtype);
    match serde::de::DeserializeSeed::deserialize(Level::top(&mut flattener), value) {
        Ok(()) => flattener.finish(),
        Err(e) => Err(flattener.error.take().unwrap_or_else(|| e.to_string())),
    }
}

/// Why JSON text did not become a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum FlattenError {
    /// Not JSON at all: a bad request.
    Syntax(String),
    /// JSON, but not a rectangular array of `dtype` values: invalid input.
    Content(String),
}

/// [`flatten`] straight from JSON text, in one pass with no tree in between: memory is the
/// typed buffer alone, whatever the nesting.
pub fn flatten_slice(
    text: &[u8],
    dtype: DataType,
) -> Result<(Vec<usize>, TensorData), FlattenError> {
    flatten_slice_as(text, dtype, dtype)
}

/// [`flatten_slice`] into `dtype` for a model input of type `shown`, which errors name (a
/// pre-processing step may parse an FP32 input as FP64 first; the caller knows only FP32).
pub fn flatten_slice_as(
    text: &[u8],
    dtype: DataType,
    shown: DataType,
) -> Result<(Vec<usize>, TensorData), FlattenError> {
    if let Some(flat) = scan::flatten(text, dtype) {
        return Ok(flat);
    }
    let mut flattener = Flattener::new(dtype);
    flattener.shown = shown;
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let parsed =
        serde::de::DeserializeSeed::deserialize(Level::top(&mut flattener), &mut deserializer)
            .and_then(|()| deserializer.end());
    match parsed {
        Ok(()) => flattener.finish().map_err(FlattenError::Content),
        Err(e) => Err(match flattener.error.take() {
            Some(content) => FlattenError::Content(content),
            None => FlattenError::Syntax(e.to_string()),
        }),
    }
}

/// The state of one flattening: the shape found so far and the typed leaves.
struct Flattener {
    /// The type errors name: the model input's (the buffer's may differ).
    shown: DataType,
    /// Each depth's length, known once the first array at that depth has ended.
    dims: Vec<Option<usize>>,
    /// The depth scalars sit at, once one has been seen.
    leaf_depth: Option<usize>,
    data: TensorData,
    /// The first content error, kept whole (serde would append a position to it).
    error: Option<String>,
}

/// One JSON leaf as the parser saw it.
#[derive(Clone, Copy)]
enum Leaf<'a> {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    Text(&'a str),
    Other(&'a str),
}

impl Leaf<'_> {
    fn shown(&self) -> String {
        match self {
            Leaf::Unsigned(u) => u.to_string(),
            Leaf::Signed(i) => i.to_string(),
            Leaf::Float(f) => f.to_string(),
            Leaf::Bool(b) => b.to_string(),
            Leaf::Text(text) if text.len() > 40 => format!("{:?}...", shorten(text)),
            Leaf::Text(text) => format!("{text:?}"),
            Leaf::Other(text) if text.len() > 40 => format!("{}...", &text[..40]),
            Leaf::Other(text) => text.to_string(),
        }
    }

    /// An integer as i128 (so u64 and i64 both fit); floats with no fractional part are
    /// accepted, as Python clients often send `1.0` for 1.
    fn integer(self) -> Option<i128> {
        match self {
            Leaf::Unsigned(u) => Some(u as i128),
            Leaf::Signed(i) => Some(i as i128),
            Leaf::Float(f) => (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i128),
            _ => None,
        }
    }

    fn float(self) -> Option<f64> {
        match self {
            Leaf::Unsigned(u) => Some(u as f64),
            Leaf::Signed(i) => Some(i as f64),
            Leaf::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// The first 40 characters of `text`, cut at a character boundary.
fn shorten(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

impl Flattener {
    fn new(dtype: DataType) -> Flattener {
        Flattener {
            shown: dtype,
            dims: Vec::new(),
            leaf_depth: None,
            data: TensorData::with_capacity(dtype, 0),
            error: None,
        }
    }

    fn fail<E: serde::de::Error>(&mut self, message: String) -> E {
        let error = E::custom(&message);
        self.error.get_or_insert(message);
        error
    }

    fn enter<E: serde::de::Error>(&mut self, depth: usize) -> Result<(), E> {
        if self.leaf_depth.is_some_and(|leaf| depth >= leaf) {
            return Err(self.fail(format!("ragged array: unexpected nesting at depth {depth}")));
        }
        if self.dims.len() == depth {
            self.dims.push(None);
        }
        Ok(())
    }

    fn element<E: serde::de::Error>(&mut self, depth: usize, count: usize) -> Result<(), E> {
        match self.dims[depth] {
            Some(len) if count > len => Err(self.fail(format!(
                "ragged array: dimension {depth} has more than {len} elements where {len} were expected"
            ))),
            _ => Ok(()),
        }
    }

    fn leave<E: serde::de::Error>(&mut self, depth: usize, count: usize) -> Result<(), E> {
        match self.dims[depth] {
            None => {
                self.dims[depth] = Some(count);
                Ok(())
            }
            Some(len) if len != count => Err(self.fail(format!(
                "ragged array: dimension {depth} has {count} elements where {len} were expected"
            ))),
            Some(_) => Ok(()),
        }
    }

    fn leaf<E: serde::de::Error>(&mut self, depth: usize, leaf: Leaf<'_>) -> Result<(), E> {
        match self.leaf_depth {
            None if self.dims.len() > depth => {
                return Err(self.fail(format!(
                    "ragged array: a scalar at depth {depth} where an array was expected"
                )));
            }
            None => self.leaf_depth = Some(depth),
            Some(leaf) if leaf != depth => {
                return Err(self.fail(format!(
                    "ragged array: a scalar at depth {depth} where an array was expected"
                )));
            }
            Some(_) => {}
        }
        if self.push(leaf).is_none() {
            let message = format!(
                "element {} ({}) is not a valid {} value",
                self.data.len(),
                leaf.shown(),
                self.shown
            );
            return Err(self.fail(message));
        }
        Ok(())
    }

    /// Converts and appends one leaf; `None` when it does not fit the type.
    fn push(&mut self, leaf: Leaf<'_>) -> Option<()> {
        macro_rules! int {
            ($v:expr, $t:ty) => {
                $v.push(<$t>::try_from(leaf.integer()?).ok()?)
            };
        }
        match &mut self.data {
            TensorData::Bool(v) => v.push(match leaf {
                Leaf::Bool(b) => b,
                Leaf::Unsigned(0) => false,
                Leaf::Unsigned(1) => true,
                _ => return None,
            }),
            TensorData::Uint8(v) => int!(v, u8),
            TensorData::Uint16(v) => int!(v, u16),
            TensorData::Uint32(v) => int!(v, u32),
            TensorData::Uint64(v) => int!(v, u64),
            TensorData::Int8(v) => int!(v, i8),
            TensorData::Int16(v) => int!(v, i16),
            TensorData::Int32(v) => int!(v, i32),
            TensorData::Int64(v) => int!(v, i64),
            // A number beyond FP32's range would silently become infinity.
            TensorData::Fp32(v) => v.push(Some(leaf.float()? as f32).filter(|x| x.is_finite())?),
            TensorData::Fp64(v) => v.push(leaf.float()?),
            // Rounded to the nearest half-precision value; beyond the type's range, refused.
            TensorData::Fp16(v) => {
                v.push(Some(f16::from_f64(leaf.float()?)).filter(|x| x.is_finite())?)
            }
            TensorData::Bf16(v) => {
                v.push(Some(bf16::from_f64(leaf.float()?)).filter(|x| x.is_finite())?)
            }
            // Text only: a number sent for a string input is a mistake worth naming.
            TensorData::Bytes(v) => match leaf {
                Leaf::Text(text) => v.push(text.to_string()),
                _ => return None,
            },
        }
        Some(())
    }

    fn finish(self) -> Result<(Vec<usize>, TensorData), String> {
        let shape = self.dims.into_iter().map(|d| d.unwrap_or(0)).collect();
        Ok((shape, self.data))
    }
}

/// One nesting level of the array being flattened, as a serde seed.
struct Level<'f> {
    flattener: &'f mut Flattener,
    depth: usize,
}

impl<'f> Level<'f> {
    fn top(flattener: &'f mut Flattener) -> Level<'f> {
        Level {
            flattener,
            depth: 0,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Level<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a string or a nested array of them")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Level { flattener, depth } = self;
        flattener.enter(depth)?;
        let mut count = 0;
        while seq
            .next_element_seed(Level {
                flattener: &mut *flattener,
                depth: depth + 1,
            })?
            .is_some()
        {
            count += 1;
            flattener.element(depth, count)?;
        }
        flattener.leave(depth, count)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.flattener.leaf(self.depth, Leaf::Unsigned(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.flattener.leaf(self.depth, Leaf::Signed(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.flattener.leaf(self.depth, Leaf::Float(v))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.flattener.leaf(self.depth, Leaf::Bool(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.flattener.leaf(self.depth, Leaf::Text(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.flattener.leaf(self.depth, Leaf::Other("null"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self.flattener.fail(format!(
            "element {} (an object) is not a valid {} value",
            self.flattener.data.len(),
            self.flattener.shown
        )))
    }
}

/// A tensor's elements serialised as one flat JSON array (the v2 form) straight from its
/// buffer; non-finite floats become null, as in [`to_flat_json`].
pub struct FlatData<'a>(pub &'a TensorData);

impl serde::Serialize for FlatData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        with_json_elements!(self.0, v => serializer.collect_seq(v.iter()))
    }
}

/// A tensor serialised as nested JSON arrays following its shape (the Azure form), straight
/// from its buffer.
pub struct NestedTensor<'a>(pub &'a Tensor);

/// A tensor as nested JSON arrays without its last dimension, which is 1 (a `squeeze`).
pub struct SqueezedTensor<'a>(pub &'a Tensor);

impl serde::Serialize for SqueezedTensor<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shape = squeezed(self.0.shape());
        with_json_elements!(self.0.data(), v => Nested { values: v, shape }.serialize(serializer))
    }
}

/// A ZipMap output, `[rows, keys]`, as one `{key: value}` object per row (scikit-learn's
/// `predict_proba` as a list of label→probability maps).
pub struct MapRows<'a>(pub &'a Tensor, pub &'a MapKeys);

impl serde::Serialize for MapRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let keys: Vec<String> = (0..self.1.len()).filter_map(|i| self.1.key(i)).collect();
        with_json_elements!(self.0.data(), v => serializer.collect_seq(
            v.chunks(keys.len().max(1)).map(|row| Row { keys: &keys, values: row })
        ))
    }
}

/// One row of a [`MapRows`]: its values by key, in column order.
struct Row<'a, T> {
    keys: &'a [String],
    values: &'a [T],
}

impl<T: serde::Serialize> serde::Serialize for Row<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.keys.iter().zip(self.values))
    }
}

/// `shape` without a last dimension of 1.
pub fn squeezed(shape: &[usize]) -> &[usize] {
    match shape.split_last() {
        Some((1, rest)) => rest,
        _ => shape,
    }
}

impl serde::Serialize for NestedTensor<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shape = self.0.shape();
        with_json_elements!(self.0.data(), v => Nested { values: v, shape }.serialize(serializer))
    }
}

struct Nested<'a, T> {
    values: &'a [T],
    shape: &'a [usize],
}

impl<T: serde::Serialize> serde::Serialize for Nested<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.shape.split_first() {
            None => match self.values.first() {
                Some(value) => value.serialize(serializer),
                None => serializer.serialize_unit(),
            },
            Some((&len, [])) => serializer.collect_seq(self.values.iter().take(len)),
            Some((&len, rest)) => {
                let stride: usize = rest.iter().product();
                let mut seq = serializer.serialize_seq(Some(len))?;
                for row in 0..len {
                    let start = (row * stride).min(self.values.len());
                    let end = (start + stride).min(self.values.len());
                    seq.serialize_element(&Nested {
                        values: &self.values[start..end],
                        shape: rest,
                    })?;
                }
                seq.end()
            }
        }
    }
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
    fn integers<T: Copy + Into<Value>>(v: &[T]) -> Vec<Value> {
        v.iter().map(|&x| x.into()).collect()
    }
    match data {
        TensorData::Bool(v) => v.iter().map(|&b| Value::Bool(b)).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| float(x.to_f64())).collect(),
        TensorData::Bf16(v) => v.iter().map(|x| float(x.to_f64())).collect(),
        TensorData::Fp32(v) => v.iter().map(|&x| float(x as f64)).collect(),
        TensorData::Fp64(v) => v.iter().map(|&x| float(x)).collect(),
        TensorData::Bytes(v) => v.iter().map(|s| Value::String(s.clone())).collect(),
        TensorData::Uint8(v) => integers(v),
        TensorData::Uint16(v) => integers(v),
        TensorData::Uint32(v) => integers(v),
        TensorData::Uint64(v) => integers(v),
        TensorData::Int8(v) => integers(v),
        TensorData::Int16(v) => integers(v),
        TensorData::Int32(v) => integers(v),
        TensorData::Int64(v) => integers(v),
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
    fn streaming_and_tree_flattening_agree_and_say_the_same() {
        let cases = [
            ("[[1, 2, 3], [4, 5, 6]]", DataType::Fp32),
            ("[[1, 2], [3]]", DataType::Fp32),
            ("[[1, 2], 3]", DataType::Fp32),
            ("[1, [2]]", DataType::Fp32),
            ("[[[1]], [[2]]]", DataType::Int64),
            ("[\"a\"]", DataType::Fp32),
            ("[[1e39, 1, 1, 1]]", DataType::Fp32),
            ("[1.5]", DataType::Int64),
            ("[300]", DataType::Uint8),
            ("[{}]", DataType::Fp32),
            ("[null]", DataType::Fp64),
            ("[[], []]", DataType::Fp32),
            ("7", DataType::Int64),
            ("[true, 0]", DataType::Bool),
            ("[[\"a\", \"b\"]]", DataType::Bytes),
            ("[\"a\", 1]", DataType::Bytes),
        ];
        for (text, dtype) in cases {
            let value: Value = serde_json::from_str(text).unwrap();
            let tree = flatten(&value, dtype);
            let streamed = flatten_slice(text.as_bytes(), dtype).map_err(|e| match e {
                FlattenError::Content(e) => e,
                FlattenError::Syntax(e) => panic!("{text}: {e}"),
            });
            assert_eq!(tree, streamed, "{text}");
        }
        assert!(matches!(
            flatten_slice(b"[1, 2", DataType::Fp32),
            Err(FlattenError::Syntax(_))
        ));
        assert!(matches!(
            flatten_slice(b"[1, 2] x", DataType::Fp32),
            Err(FlattenError::Syntax(_))
        ));
        assert_eq!(
            flatten_slice(b"[[], []]", DataType::Fp32).unwrap().0,
            vec![2, 0]
        );
    }

    #[test]
    fn half_precision_is_json_numbers_both_ways() {
        let (shape, data) = flatten_slice(b"[[0.5, -2], [1e-3, 65504]]", DataType::Fp16).unwrap();
        assert_eq!(shape, vec![2, 2]);
        // 1e-3 rounds to the nearest FP16 (0.0010004 = 0x1419).
        assert_eq!(data.to_le_bytes()[4..6], [0x19, 0x14]);
        let tensor = Tensor::new(shape, data).unwrap();
        assert_eq!(
            serde_json::to_value(NestedTensor(&tensor)).unwrap(),
            json!([[0.5, -2.0], [f16::from_f64(1e-3).to_f32(), 65504.0]])
        );
        assert_eq!(to_flat_json(tensor.data())[3], json!(65504.0));
        // Past FP16's largest value is refused, not made infinity; BF16 reaches FP32's range.
        let error = flatten(&json!([1, 70000]), DataType::Fp16).unwrap_err();
        assert!(
            error.contains("element 1 (70000) is not a valid FP16"),
            "{error}"
        );
        let (_, wide) = flatten(&json!([3e38]), DataType::Bf16).unwrap();
        assert!(wide.to_f64_vec()[0] > 2.9e38);
    }

    #[test]
    fn strings_flatten_into_bytes_tensors_and_back() {
        let text = r#"[["setosa", "vir\"ginica"], ["é", ""]]"#;
        let (shape, data) = flatten_slice(text.as_bytes(), DataType::Bytes).unwrap();
        assert_eq!(shape, vec![2, 2]);
        let expected = TensorData::Bytes(vec![
            "setosa".into(),
            "vir\"ginica".into(),
            "é".into(),
            String::new(),
        ]);
        assert_eq!(data, expected);
        let tensor = Tensor::new(shape, data).unwrap();
        assert_eq!(
            serde_json::to_value(NestedTensor(&tensor)).unwrap(),
            json!([["setosa", "vir\"ginica"], ["é", ""]])
        );
        assert_eq!(
            to_flat_json(tensor.data()),
            json!(["setosa", "vir\"ginica", "é", ""])
        );
        // Numbers are not text, and text is not a number; both errors name the element.
        let error = flatten(&json!([["a", 1]]), DataType::Bytes).unwrap_err();
        assert!(
            error.contains("element 1 (1) is not a valid BYTES"),
            "{error}"
        );
        let error = flatten(&json!([[1, "two"]]), DataType::Fp32).unwrap_err();
        assert!(
            error.contains(r#"element 1 ("two") is not a valid FP32"#),
            "{error}"
        );
        let long = "ü".repeat(100);
        let error = flatten(&json!([long]), DataType::Int64).unwrap_err();
        assert!(
            error.contains(&format!("{:?}...", "ü".repeat(40))),
            "{error}"
        );
    }

    #[test]
    fn a_number_beyond_the_type_is_refused_not_made_infinite() {
        let error = flatten(&json!([[1e39, 1, 1, 1]]), DataType::Fp32).unwrap_err();
        assert!(
            error.contains("element 0") && error.contains("FP32"),
            "{error}"
        );
        assert!(flatten(&json!([3.4e38]), DataType::Fp32).is_ok());
        assert!(flatten(&json!([1e300]), DataType::Fp64).is_ok());
    }

    #[test]
    fn serialised_tensors_match_the_tree_forms() {
        let t = Tensor::new(vec![2, 3], vec![1.5f32, 2.0, f32::NAN, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(
            serde_json::to_value(NestedTensor(&t)).unwrap(),
            to_nested_json(&t)
        );
        assert_eq!(
            serde_json::to_value(FlatData(t.data())).unwrap(),
            to_flat_json(t.data())
        );
        let scalar = Tensor::new(vec![], vec![3i64]).unwrap();
        assert_eq!(
            serde_json::to_value(NestedTensor(&scalar)).unwrap(),
            json!(3)
        );
    }

    #[test]
    fn zipmap_rows_are_objects_keyed_by_label() {
        let t = Tensor::new(vec![2, 2], vec![0.1f32, 0.9, 1.0, 0.0]).unwrap();
        let labels = MapKeys::Strings(vec!["no".into(), "yes".into()]);
        // FP32 values keep their shortest form, as every other output's do.
        assert_eq!(
            serde_json::to_string(&MapRows(&t, &labels)).unwrap(),
            r#"[{"no":0.1,"yes":0.9},{"no":1.0,"yes":0.0}]"#
        );
        let classes = MapKeys::Int64(vec![3, 7]);
        assert_eq!(
            serde_json::to_value(MapRows(&t, &classes)).unwrap(),
            json!([{"3": 0.1f32, "7": 0.9f32}, {"3": 1.0, "7": 0.0}])
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
