//! Host tensors: a shape and a typed, row-major buffer.
//!
//! Typed storage (rather than raw bytes) keeps engine hand-off and JSON codecs free of
//! alignment concerns; every per-type operation goes through [`with_tensor_data!`].

pub use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Element types, named as the Open Inference Protocol names them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    Uint8,
    #[serde(rename = "UINT16")]
    Uint16,
    #[serde(rename = "UINT32")]
    Uint32,
    #[serde(rename = "UINT64")]
    Uint64,
    #[serde(rename = "INT8")]
    Int8,
    #[serde(rename = "INT16")]
    Int16,
    #[serde(rename = "INT32")]
    Int32,
    #[serde(rename = "INT64")]
    Int64,
    /// IEEE 754 half precision: ONNX `float16`.
    #[serde(rename = "FP16")]
    Fp16,
    /// bfloat16 (the upper half of an FP32): ONNX `bfloat16`.
    #[serde(rename = "BF16")]
    Bf16,
    #[serde(rename = "FP32")]
    Fp32,
    #[serde(rename = "FP64")]
    Fp64,
    /// Text: ONNX `tensor(string)`, the protocol's `BYTES`. Held as UTF-8, which is what
    /// ONNX Runtime's string tensors and JSON carry.
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The Open Inference Protocol name (`FP32`, `INT64`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in the binary tensor data extension (BOOL is one byte); `None` for
    /// BYTES, whose elements each carry their own length.
    pub fn size_of(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }

    /// The ONNX `TensorProto.DataType` code, or `None` for element types modelpod does not serve
    /// (complex, float8, 4-bit).
    pub fn from_onnx(code: i32) -> Option<DataType> {
        Some(match code {
            1 => DataType::Fp32,
            2 => DataType::Uint8,
            3 => DataType::Int8,
            4 => DataType::Uint16,
            5 => DataType::Int16,
            6 => DataType::Int32,
            7 => DataType::Int64,
            9 => DataType::Bool,
            10 => DataType::Fp16,
            11 => DataType::Fp64,
            12 => DataType::Uint32,
            13 => DataType::Uint64,
            8 => DataType::Bytes,
            16 => DataType::Bf16,
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
        )
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataType {
    type Err = TensorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| TensorError::UnsupportedDataType(s.to_string()))
    }
}

/// Row-major element storage, one variant per [`DataType`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Bf16(Vec<bf16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<String>),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of a [`TensorData`] (by value, reference or
/// mutable reference, following `$data`).
#[macro_export]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::Uint8($v) => $body,
            $crate::TensorData::Uint16($v) => $body,
            $crate::TensorData::Uint32($v) => $body,
            $crate::TensorData::Uint64($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::Fp16($v) => $body,
            $crate::TensorData::Bf16($v) => $body,
            $crate::TensorData::Fp32($v) => $body,
            $crate::TensorData::Fp64($v) => $body,
            $crate::TensorData::Bytes($v) => $body,
        }
    };
}

/// [`with_tensor_data!`] over the numeric variants only, with `$bytes` for BYTES.
#[macro_export]
macro_rules! with_numeric_data {
    ($data:expr, $v:ident => $body:expr, $s:ident => $bytes:expr) => {
        match $data {
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::Uint8($v) => $body,
            $crate::TensorData::Uint16($v) => $body,
            $crate::TensorData::Uint32($v) => $body,
            $crate::TensorData::Uint64($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::Fp16($v) => $body,
            $crate::TensorData::Bf16($v) => $body,
            $crate::TensorData::Fp32($v) => $body,
            $crate::TensorData::Fp64($v) => $body,
            $crate::TensorData::Bytes($s) => $bytes,
        }
    };
}

impl TensorData {
    pub fn dtype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Bf16(_) => DataType::Bf16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty buffer of `dtype` with room for `capacity` elements.
    pub fn with_capacity(dtype: DataType, capacity: usize) -> TensorData {
        match dtype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(capacity)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(capacity)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(capacity)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(capacity)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(capacity)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(capacity)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DataType::Fp16 => TensorData::Fp16(Vec::with_capacity(capacity)),
            DataType::Bf16 => TensorData::Bf16(Vec::with_capacity(capacity)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(capacity)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// Appends `other[range]`; the element types must match (checked by the caller).
    fn extend_from(&mut self, other: &TensorData, range: std::ops::Range<usize>) {
        macro_rules! ext {
            ($($var:ident),*) => {
                match (self, other) {
                    $((TensorData::$var(a), TensorData::$var(b)) => a.extend_from_slice(&b[range]),)*
                    (a, b) => unreachable!("extend_from {:?} with {:?}", a.dtype(), b.dtype()),
                }
            };
        }
        ext!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Bf16, Fp32, Fp64,
            Bytes
        )
    }

    /// Values widened to f64, for pre/post-processing arithmetic and comparisons. Text parses
    /// as a number where it is one and is NaN otherwise (steps that do arithmetic refuse
    /// BYTES outputs when the model loads).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            TensorData::Bool(v) => v.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
            TensorData::Uint8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Uint16(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Uint32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Uint64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Int8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Int16(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Fp16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::Bf16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::Fp32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Fp64(v) => v.clone(),
            TensorData::Bytes(v) => v
                .iter()
                .map(|s| s.trim().parse().unwrap_or(f64::NAN))
                .collect(),
        }
    }

    /// Converts values to `dtype` with Rust's `as` semantics (saturating float-to-int,
    /// non-zero is true; to FP16 and BF16, round to nearest); to BYTES, numbers become their
    /// decimal text.
    pub fn cast(&self, dtype: DataType) -> TensorData {
        if self.dtype() == dtype {
            return self.clone();
        }
        if dtype == DataType::Bytes {
            return TensorData::Bytes(with_numeric_data!(
                self,
                v => v.iter().map(|x| x.to_string()).collect(),
                s => s.clone()
            ));
        }
        let wide = self.to_f64_vec();
        match dtype {
            DataType::Bool => TensorData::Bool(wide.iter().map(|&x| x != 0.0).collect()),
            DataType::Uint8 => TensorData::Uint8(wide.iter().map(|&x| x as u8).collect()),
            DataType::Uint16 => TensorData::Uint16(wide.iter().map(|&x| x as u16).collect()),
            DataType::Uint32 => TensorData::Uint32(wide.iter().map(|&x| x as u32).collect()),
            DataType::Uint64 => TensorData::Uint64(wide.iter().map(|&x| x as u64).collect()),
            DataType::Int8 => TensorData::Int8(wide.iter().map(|&x| x as i8).collect()),
            DataType::Int16 => TensorData::Int16(wide.iter().map(|&x| x as i16).collect()),
            DataType::Int32 => TensorData::Int32(wide.iter().map(|&x| x as i32).collect()),
            DataType::Int64 => TensorData::Int64(wide.iter().map(|&x| x as i64).collect()),
            DataType::Fp16 => TensorData::Fp16(wide.iter().map(|&x| f16::from_f64(x)).collect()),
            DataType::Bf16 => TensorData::Bf16(wide.iter().map(|&x| bf16::from_f64(x)).collect()),
            DataType::Fp32 => TensorData::Fp32(wide.iter().map(|&x| x as f32).collect()),
            DataType::Fp64 => TensorData::Fp64(wide),
            DataType::Bytes => unreachable!("handled above"),
        }
    }

    /// Little-endian bytes, as the binary tensor data extension carries them: BYTES elements
    /// each as a 4-byte little-endian length and then the bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::Bytes(v) => {
                let mut out = Vec::with_capacity(v.iter().map(|s| 4 + s.len()).sum());
                for s in v {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                out
            }
            TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
            TensorData::Uint8(v) => v.clone(),
            TensorData::Int8(v) => v.iter().map(|&x| x as u8).collect(),
            other => {
                let mut out =
                    Vec::with_capacity(other.len() * other.dtype().size_of().unwrap_or_default());
                macro_rules! put {
                    ($v:expr) => {
                        for x in $v {
                            out.extend_from_slice(&x.to_le_bytes());
                        }
                    };
                }
                match other {
                    TensorData::Uint16(v) => put!(v),
                    TensorData::Uint32(v) => put!(v),
                    TensorData::Uint64(v) => put!(v),
                    TensorData::Int16(v) => put!(v),
                    TensorData::Int32(v) => put!(v),
                    TensorData::Int64(v) => put!(v),
                    TensorData::Fp16(v) => put!(v),
                    TensorData::Bf16(v) => put!(v),
                    TensorData::Fp32(v) => put!(v),
                    TensorData::Fp64(v) => put!(v),
                    TensorData::Bool(_)
                    | TensorData::Uint8(_)
                    | TensorData::Int8(_)
                    | TensorData::Bytes(_) => unreachable!(),
                }
                out
            }
        }
    }

    /// Parses little-endian bytes; the length must be a whole number of elements.
    pub fn from_le_bytes(dtype: DataType, bytes: &[u8]) -> Result<TensorData, TensorError> {
        let Some(size) = dtype.size_of() else {
            return bytes_elements(bytes).map(TensorData::Bytes);
        };
        if !bytes.len().is_multiple_of(size) {
            return Err(TensorError::RawLength {
                dtype,
                bytes: bytes.len(),
            });
        }
        macro_rules! get {
            ($t:ty, $var:ident) => {
                TensorData::$var(
                    bytes
                        .chunks_exact(size)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk size")))
                        .collect(),
                )
            };
        }
        Ok(match dtype {
            DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            DataType::Uint8 => TensorData::Uint8(bytes.to_vec()),
            DataType::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
            DataType::Uint16 => get!(u16, Uint16),
            DataType::Uint32 => get!(u32, Uint32),
            DataType::Uint64 => get!(u64, Uint64),
            DataType::Int16 => get!(i16, Int16),
            DataType::Int32 => get!(i32, Int32),
            DataType::Int64 => get!(i64, Int64),
            DataType::Fp16 => get!(f16, Fp16),
            DataType::Bf16 => get!(bf16, Bf16),
            DataType::Fp32 => get!(f32, Fp32),
            DataType::Fp64 => get!(f64, Fp64),
            DataType::Bytes => unreachable!("handled above"),
        })
    }
}

/// BYTES elements of the binary extension: each a 4-byte little-endian length, then that
/// many bytes of UTF-8.
fn bytes_elements(mut bytes: &[u8]) -> Result<Vec<String>, TensorError> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let index = elements.len();
        let bad = |reason: String| TensorError::BadBytes { index, reason };
        let Some((prefix, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(bad(format!(
                "{} bytes left where a 4-byte length was expected",
                bytes.len()
            )));
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > rest.len() {
            return Err(bad(format!(
                "its length says {len} bytes but {} are left",
                rest.len()
            )));
        }
        let (text, rest) = rest.split_at(len);
        let text = std::str::from_utf8(text).map_err(|e| {
            bad(format!(
                "not UTF-8 ({e}); modelpod's BYTES tensors are text"
            ))
        })?;
        elements.push(text.to_string());
        bytes = rest;
    }
    Ok(elements)
}

macro_rules! impl_from_vec {
    ($($t:ty => $var:ident),*) => {
        $(impl From<Vec<$t>> for TensorData {
            fn from(v: Vec<$t>) -> Self {
                TensorData::$var(v)
            }
        })*
    };
}
impl_from_vec!(bool => Bool, u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64, i8 => Int8,
    i16 => Int16, i32 => Int32, i64 => Int64, f16 => Fp16, bf16 => Bf16, f32 => Fp32, f64 => Fp64,
    String => Bytes);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements but {actual} were given")]
    ElementCount {
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("unsupported datatype '{0}'")]
    UnsupportedDataType(String),
    #[error("{bytes} bytes is not a whole number of {dtype} elements")]
    RawLength { dtype: DataType, bytes: usize },
    #[error("BYTES element {index}: {reason}")]
    BadBytes { index: usize, reason: String },
    #[error("cannot join tensors: {0}")]
    Incompatible(String),
    #[error("a tensor with a batch dimension needs at least one dimension")]
    NoBatchDimension,
    #[error("shape {0:?} holds more elements than this machine can address")]
    TooLarge(Vec<usize>),
}

/// The number of elements of `shape`, or `None` where it overflows: shapes come from clients,
/// and a wrapped product (`[8, 2^61 + 1]` wraps to 8) would let a lie through.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |count, &d| count.checked_mul(d))
}

/// A dense host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: impl Into<TensorData>) -> Result<Tensor, TensorError> {
        let data = data.into();
        let Some(expected) = element_count(&shape) else {
            return Err(TensorError::TooLarge(shape));
        };
        if expected != data.len() {
            return Err(TensorError::ElementCount {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Size of dimension 0, the batch dimension when the model batches.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// The shape of one row: every dimension but the first.
    pub fn row_shape(&self) -> &[usize] {
        self.shape.get(1..).unwrap_or(&[])
    }

    fn row_len(&self) -> usize {
        self.row_shape().iter().product()
    }

    /// Joins tensors along dimension 0. All parts must share dtype and row shape.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts
            .first()
            .ok_or_else(|| TensorError::Incompatible("nothing to join".into()))?;
        if first.shape.is_empty() {
            return Err(TensorError::NoBatchDimension);
        }
        if parts.len() == 1 {
            return Ok((*first).clone());
        }
        let mut rows = 0;
        let mut total = 0;
        for part in parts {
            if part.dtype() != first.dtype() || part.row_shape() != first.row_shape() {
                return Err(TensorError::Incompatible(format!(
                    "{} {:?} and {} {:?}",
                    first.dtype(),
                    first.shape,
                    part.dtype(),
                    part.shape
                )));
            }
            rows += part.rows();
            total += part.len();
        }
        let mut data = TensorData::with_capacity(first.dtype(), total);
        for part in parts {
            data.extend_from(&part.data, 0..part.len());
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor { shape, data })
    }

    /// Rows `start..start + count` as a new tensor.
    pub fn slice_rows(&self, start: usize, count: usize) -> Result<Tensor, TensorError> {
        if self.shape.is_empty() {
            return Err(TensorError::NoBatchDimension);
        }
        if start + count > self.rows() {
            return Err(TensorError::Incompatible(format!(
                "rows {start}..{} of a tensor with {} rows",
                start + count,
                self.rows()
            )));
        }
        let row_len = self.row_len();
        let mut data = TensorData::with_capacity(self.dtype(), count * row_len);
        data.extend_from(&self.data, start * row_len..(start + count) * row_len);
        let mut shape = self.shape.clone();
        shape[0] = count;
        Ok(Tensor { shape, data })
    }

    /// Same elements, new shape (element counts must agree).
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_is_checked() {
        assert!(Tensor::new(vec![2, 3], vec![0f32; 6]).is_ok());
        assert_eq!(
            Tensor::new(vec![2, 3], vec![0f32; 5]).unwrap_err(),
            TensorError::ElementCount {
                shape: vec![2, 3],
                expected: 6,
                actual: 5
            }
        );
        // 8 × (2^61 + 1) wraps to 8 in unchecked arithmetic.
        let lie = vec![8, (1usize << 61) + 1];
        assert_eq!(element_count(&lie), None);
        assert_eq!(
            Tensor::new(lie.clone(), vec![0f32; 8]).unwrap_err(),
            TensorError::TooLarge(lie)
        );
    }

    #[test]
    fn concat_then_slice_round_trips() {
        let a = Tensor::new(vec![1, 2], vec![1i64, 2]).unwrap();
        let b = Tensor::new(vec![2, 2], vec![3i64, 4, 5, 6]).unwrap();
        let joined = Tensor::concat_rows(&[&a, &b]).unwrap();
        assert_eq!(joined.shape(), &[3, 2]);
        assert_eq!(joined.slice_rows(0, 1).unwrap(), a);
        assert_eq!(joined.slice_rows(1, 2).unwrap(), b);
        assert!(joined.slice_rows(2, 2).is_err());
    }

    #[test]
    fn concat_refuses_mixed_row_shapes_and_types() {
        let a = Tensor::new(vec![1, 2], vec![1f32, 2.0]).unwrap();
        let b = Tensor::new(vec![1, 3], vec![1f32, 2.0, 3.0]).unwrap();
        let c = Tensor::new(vec![1, 2], vec![1f64, 2.0]).unwrap();
        assert!(Tensor::concat_rows(&[&a, &b]).is_err());
        assert!(Tensor::concat_rows(&[&a, &c]).is_err());
    }

    #[test]
    fn le_bytes_round_trip_every_type() {
        for dtype in DataType::ALL {
            let data = TensorData::Fp64(vec![0.0, 1.0, 2.0, 3.0]).cast(dtype);
            let bytes = data.to_le_bytes();
            // BYTES: four one-character strings, each after a 4-byte length.
            assert_eq!(bytes.len(), 4 * dtype.size_of().unwrap_or(5));
            assert_eq!(TensorData::from_le_bytes(dtype, &bytes).unwrap(), data);
        }
        assert!(TensorData::from_le_bytes(DataType::Fp32, &[0; 7]).is_err());
        assert!(TensorData::from_le_bytes(DataType::Fp16, &[0; 3]).is_err());
    }

    #[test]
    fn half_precision_is_ieee_binary16_and_bfloat16_on_the_wire() {
        let half = TensorData::Fp64(vec![1.0, -2.5, 65504.0]).cast(DataType::Fp16);
        // 1.0 = 0x3C00, -2.5 = 0xC100, 65504 (the largest FP16) = 0x7BFF, little-endian.
        assert_eq!(half.to_le_bytes(), [0x00, 0x3C, 0x00, 0xC1, 0xFF, 0x7B]);
        let brain = TensorData::Fp64(vec![1.0, -2.5, 3.0e38]).cast(DataType::Bf16);
        // bfloat16 keeps FP32's exponent: 3e38 survives (as 0x7F62), where FP16 overflows.
        assert_eq!(brain.to_le_bytes(), [0x80, 0x3F, 0x20, 0xC0, 0x62, 0x7F]);
        assert_eq!(brain.to_f64_vec()[..2], [1.0, -2.5]);
        assert!(DataType::Fp16.is_float() && DataType::Bf16.is_float());
        assert_eq!(DataType::from_onnx(10), Some(DataType::Fp16));
        assert_eq!(DataType::from_onnx(16), Some(DataType::Bf16));
    }

    #[test]
    fn bytes_elements_are_length_prefixed_utf8() {
        let data = TensorData::Bytes(vec!["setosa".into(), String::new(), "é".into()]);
        let wire = data.to_le_bytes();
        assert_eq!(&wire[..10], b"\x06\0\0\0setosa");
        assert_eq!(
            TensorData::from_le_bytes(DataType::Bytes, &wire).unwrap(),
            data
        );
        // A length past the end, a short prefix and non-UTF-8 are refused, naming the element.
        for (wire, index) in [
            (&b"\x02\0\0\0ab\x09\0\0\0abc"[..], 1),
            (&b"\x01\0\0\0a\x01\0"[..], 1),
            (&b"\x02\0\0\0\xff\xfe"[..], 0),
        ] {
            match TensorData::from_le_bytes(DataType::Bytes, wire) {
                Err(TensorError::BadBytes { index: i, .. }) => assert_eq!(i, index),
                other => panic!("{wire:?}: {other:?}"),
            }
        }
        assert_eq!(TensorData::Bytes(vec![]).to_le_bytes(), Vec::<u8>::new());
    }

    #[test]
    fn datatype_names_parse_case_insensitively() {
        assert_eq!("fp32".parse::<DataType>().unwrap(), DataType::Fp32);
        assert_eq!("INT64".parse::<DataType>().unwrap(), DataType::Int64);
        assert_eq!("bytes".parse::<DataType>().unwrap(), DataType::Bytes);
        assert!("STRING".parse::<DataType>().is_err());
    }
}
