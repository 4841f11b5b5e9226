//! The common case of a tensor's JSON text, scanned by hand: nested arrays of plain numbers
//! into FP32, FP64, INT32 or INT64. It accepts only what it fully understands and gives up
//! (`None`) on anything else (strings, objects, a number out of range, bad syntax), leaving the
//! serde path in [`super::flatten_slice`] to decode it or to say exactly what is wrong. Written
//! by hand because the serde path spends most of its time per element in visitor calls: this
//! one is a single loop over the bytes.

use modelpod_accel::{DataType, TensorData};

/// Powers of ten exact in f32 (up to 10^10) and f64 (up to 10^22).
const POW10_F32: [f32; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];
const POW10_F64: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A JSON number as its decimal parts: `mantissa × 10^exponent`, with its text.
struct Number<'a> {
    negative: bool,
    mantissa: u64,
    exponent: i32,
    integer: bool,
    text: &'a [u8],
}

impl Number<'_> {
    fn f64(&self) -> Option<f64> {
        let exact = self.mantissa <= 1 << 53 && self.exponent.unsigned_abs() <= 22;
        let magnitude = if exact {
            let m = self.mantissa as f64;
            let p = POW10_F64[self.exponent.unsigned_abs() as usize];
            // Both operands are exact, so IEEE division or multiplication rounds once.
            if self.exponent < 0 { m / p } else { m * p }
        } else {
            return std::str::from_utf8(self.text).ok()?.parse().ok();
        };
        Some(if self.negative { -magnitude } else { magnitude })
    }

    fn f32(&self) -> Option<f32> {
        let value = if self.mantissa <= 1 << 24 && self.exponent.unsigned_abs() <= 10 {
            let m = self.mantissa as f32;
            let p = POW10_F32[self.exponent.unsigned_abs() as usize];
            let magnitude = if self.exponent < 0 { m / p } else { m * p };
            if self.negative { -magnitude } else { magnitude }
        } else {
            self.f64()? as f32
        };
        // Past FP32's range: the serde path says so.
        value.is_finite().then_some(value)
    }

    fn i128(&self) -> Option<i128> {
        if !self.integer || self.exponent != 0 {
            return None;
        }
        let magnitude = self.mantissa as i128;
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

/// Parses the number at the start of `text`; returns it and its length.
fn number(text: &[u8]) -> Option<(Number<'_>, usize)> {
    let mut i = 0;
    let negative = text.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0u32;
    let mut exponent: i32 = 0;
    let int_start = i;
    while let Some(d) = text.get(i).filter(|b| b.is_ascii_digit()) {
        mantissa = mantissa.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        digits += 1;
        i += 1;
    }
    // JSON allows no empty integer part and no leading zeros.
    if i == int_start || (text[int_start] == b'0' && i - int_start > 1) {
        return None;
    }
    let mut integer = true;
    if text.get(i) == Some(&b'.') {
        integer = false;
        i += 1;
        let fraction_start = i;
        while let Some(d) = text.get(i).filter(|b| b.is_ascii_digit()) {
            mantissa = mantissa.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            digits += 1;
            exponent -= 1;
            i += 1;
        }
        if i == fraction_start {
            return None;
        }
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        integer = false;
        i += 1;
        let sign = match text.get(i) {
            Some(b'-') => {
                i += 1;
                -1
            }
            Some(b'+') => {
                i += 1;
                1
            }
            _ => 1,
        };
        let start = i;
        let mut value: i32 = 0;
        while let Some(d) = text.get(i).filter(|b| b.is_ascii_digit()) {
            value = value.checked_mul(10)?.checked_add(i32::from(d - b'0'))?;
            i += 1;
        }
        if i == start {
            return None;
        }
        exponent = exponent.checked_add(sign * value)?;
    }
    if digits > 19 {
        return None;
    }
    Some((
        Number {
            negative,
            mantissa,
            exponent,
            integer,
            text: &text[..i],
        },
        i,
    ))
}

/// Flattens `text` if it is nested arrays of plain numbers of a type this scanner handles.
pub fn flatten(text: &[u8], dtype: DataType) -> Option<(Vec<usize>, TensorData)> {
    let mut data = match dtype {
        DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(text.len() / 8)),
        DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(text.len() / 8)),
        DataType::Int32 => TensorData::Int32(Vec::with_capacity(text.len() / 8)),
        DataType::Int64 => TensorData::Int64(Vec::with_capacity(text.len() / 8)),
        _ => return None,
    };
    // Each open array's element count, and each depth's length once its first array closed.
    let mut counts: Vec<usize> = Vec::new();
    let mut dims: Vec<Option<usize>> = Vec::new();
    let mut leaf_depth: Option<usize> = None;
    let mut expect_value = true;
    let mut done = false;
    let mut i = 0;
    while i < text.len() {
        let byte = text[i];
        match byte {
            b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            _ if done => return None,
            b'[' if expect_value => {
                let depth = counts.len();
                if leaf_depth.is_some_and(|leaf| depth >= leaf) || depth >= 128 {
                    return None;
                }
                if let Some(parent) = counts.last_mut() {
                    *parent += 1;
                }
                if dims.len() == depth {
                    dims.push(None);
                }
                counts.push(0);
                i += 1;
            }
            b']' => {
                let count = counts.pop()?;
                // `[1,]` is not JSON; `[]` is.
                if expect_value && count > 0 {
                    return None;
                }
                let depth = counts.len();
                match dims[depth] {
                    None => dims[depth] = Some(count),
                    Some(len) if len != count => return None,
                    Some(_) => {}
                }
                expect_value = false;
                done = counts.is_empty();
                i += 1;
            }
            b',' if !expect_value && !counts.is_empty() => {
                expect_value = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' if expect_value => {
                let depth = counts.len();
                match leaf_depth {
                    None if dims.len() > depth => return None,
                    None => leaf_depth = Some(depth),
                    Some(leaf) if leaf != depth => return None,
                    Some(_) => {}
                }
                let (value, len) = number(&text[i..])?;
                match &mut data {
                    TensorData::Fp32(v) => v.push(value.f32()?),
                    TensorData::Fp64(v) => v.push(value.f64()?),
                    TensorData::Int32(v) => v.push(i32::try_from(value.i128()?).ok()?),
                    TensorData::Int64(v) => v.push(i64::try_from(value.i128()?).ok()?),
                    _ => return None,
                }
                if let Some(count) = counts.last_mut() {
                    *count += 1;
                    if dims[depth - 1].is_some_and(|l| *count > l) {
                        return None;
                    }
                }
                expect_value = false;
                done = counts.is_empty();
                i += len;
            }
            _ => return None,
        }
    }
    if !done {
        return None;
    }
    let shape = dims.into_iter().map(|d| d.unwrap_or(0)).collect();
    Some((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn takes_plain_number_arrays_and_leaves_the_rest() {
        assert_eq!(
            flatten(b"[[1, 2.5, -3e2], [0.125, 4, 5]]", DataType::Fp32),
            Some((
                vec![2, 3],
                TensorData::Fp32(vec![1.0, 2.5, -300.0, 0.125, 4.0, 5.0])
            ))
        );
        assert_eq!(
            flatten(b" 7 ", DataType::Int64),
            Some((vec![], TensorData::Int64(vec![7])))
        );
        assert_eq!(
            flatten(b"[[], []]", DataType::Fp32),
            Some((vec![2, 0], TensorData::Fp32(vec![])))
        );
        for text in [
            &b"[1, 2"[..],
            b"[1 2]",
            b"[1,]",
            b"[,1]",
            b"[01]",
            b"[1.]",
            b"[.5]",
            b"[1e]",
            b"[1e39]",
            b"[[1, 2], [3]]",
            b"[[1], 2]",
            b"[1, [2]]",
            b"[\"a\"]",
            b"[null]",
            b"[1] [2]",
            b"[1] x",
            b"[1.5]",
        ] {
            let dtype = if text == b"[1.5]" {
                DataType::Int64
            } else {
                DataType::Fp32
            };
            assert_eq!(
                flatten(text, dtype),
                None,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert_eq!(
            flatten(b"[300]", DataType::Uint8),
            None,
            "types it does not handle"
        );
        assert_eq!(flatten(b"[3000000000]", DataType::Int32), None);
    }

    proptest! {
        /// Whatever it takes, it reads as the serde path does (to the float's last bit for
        /// FP64, and within FP32's rounding for FP32).
        #[test]
        fn agrees_with_serde(values in proptest::collection::vec(-1e7f64..1e7, 0..40), digits in 0usize..9, rows in 1usize..4) {
            let text: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
            let per_row = text.len().div_ceil(rows).max(1);
            let nested: Vec<String> = text.chunks(per_row).map(|c| format!("[{}]", c.join(", "))).collect();
            let body = format!("[{}]", nested.join(", "));
            let fast = flatten(body.as_bytes(), DataType::Fp64);
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            let slow = super::super::flatten(&parsed, DataType::Fp64);
            match (fast, slow) {
                (Some((shape, TensorData::Fp64(a))), Ok((slow_shape, TensorData::Fp64(b)))) => {
                    prop_assert_eq!(shape, slow_shape);
                    for (x, y) in a.iter().zip(&b) {
                        prop_assert!((x - y).abs() <= y.abs() * 1e-15, "{} vs {}", x, y);
                    }
                }
                (None, Err(_)) => {}
                (None, Ok(_)) => {
                    // Only ragged input may fall back, and it is an error on the slow path too.
                    prop_assert!(false, "fell back on valid input {}", body);
                }
                (fast, slow) => prop_assert!(false, "{:?} vs {:?}", fast, slow),
            }
            if let Some((_, TensorData::Fp32(a))) = flatten(body.as_bytes(), DataType::Fp32) {
                for (x, v) in a.iter().zip(&text) {
                    let exact: f64 = v.parse().unwrap();
                    prop_assert!((*x as f64 - exact).abs() <= exact.abs() * 1.2e-7 + 1e-30);
                }
            }
        }
    }
}
