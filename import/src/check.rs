//! The converted model checked as it will be served: the sample request through modelpod's
//! own `/score` path (registry, engine plan, declared steps, reply codec) in this process, its
//! answer compared with what the entry script's run() answered.

use crate::ImportError;
use modelpod_accel::EngineChoice;
use modelpod_accel::node::NodeReport;
use modelpod_scoring::{Registry, RegistryConfig, Scorer, ScoringLimits};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// How far the served answers are from the original's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Numbers compared.
    pub numbers: usize,
    /// Texts and booleans compared (equal or not).
    pub exact: usize,
    /// The largest absolute difference between two numbers.
    pub largest_difference: f64,
    /// The largest difference scaled by `max(1, |expected|)`, what the tolerance bounds.
    pub largest_scaled_difference: f64,
    /// Where the largest scaled difference is (`[3][1]`).
    pub at: String,
    /// The first place the answers differ in kind, shape or text, if any.
    pub mismatch: Option<String>,
}

impl Comparison {
    pub fn within(&self, tolerance: f64) -> bool {
        self.mismatch.is_none() && self.largest_scaled_difference <= tolerance
    }
}

/// Compares two JSON answers: same structure, equal texts, numbers within a scaled tolerance.
pub fn compare(expected: &Value, actual: &Value) -> Comparison {
    let mut comparison = Comparison {
        numbers: 0,
        exact: 0,
        largest_difference: 0.0,
        largest_scaled_difference: 0.0,
        at: String::new(),
        mismatch: None,
    };
    walk(expected, actual, &mut String::new(), &mut comparison);
    comparison
}

fn walk(expected: &Value, actual: &Value, path: &mut String, out: &mut Comparison) {
    if out.mismatch.is_some() {
        return;
    }
    let here = |path: &str| {
        if path.is_empty() {
            "the answer".to_string()
        } else {
            path.to_string()
        }
    };
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (
                e.as_f64().unwrap_or(f64::NAN),
                a.as_f64().unwrap_or(f64::NAN),
            );
            let difference = (e - a).abs();
            let scaled = difference / e.abs().max(1.0);
            out.numbers += 1;
            if difference.is_nan() {
                out.mismatch = Some(format!("{}: {e} against {a}", here(path)));
            } else if scaled > out.largest_scaled_difference || out.numbers == 1 {
                out.largest_scaled_difference = scaled.max(out.largest_scaled_difference);
                out.at = here(path);
            }
            out.largest_difference = out.largest_difference.max(difference);
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.mismatch = Some(format!(
                    "{}: a list of {} against a list of {}",
                    here(path),
                    e.len(),
                    a.len()
                ));
                return;
            }
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(e, a, path, out);
                path.truncate(len);
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            if let Some(key) = e.keys().find(|k| !a.contains_key(*k)) {
                out.mismatch = Some(format!("{}: \"{key}\" is missing", here(path)));
                return;
            }
            if let Some(key) = a.keys().find(|k| !e.contains_key(*k)) {
                out.mismatch = Some(format!("{}: \"{key}\" is extra", here(path)));
                return;
            }
            for (key, e) in e {
                let len = path.len();
                path.push_str(&format!("[\"{key}\"]"));
                walk(e, &a[key], path, out);
                path.truncate(len);
            }
        }
        (e, a) if kind(e) == kind(a) => {
            out.exact += 1;
            if e != a {
                out.mismatch = Some(format!("{}: {e} against {a}", here(path)));
            }
        }
        (e, a) => {
            out.mismatch = Some(format!("{}: {} against {}", here(path), kind(e), kind(a)));
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Serves `model` from `repository` in this process, with the engine plan `serve` would
/// use on this node, and answers `request` through `/score`'s decode, scoring and encode.
pub async fn score_in_process(
    repository: &Path,
    model: &str,
    backend: EngineChoice,
    ort_library: Option<PathBuf>,
    request: &Value,
) -> Result<(Value, String), ImportError> {
    let repository = repository.to_path_buf();
    let registry = tokio::task::spawn_blocking(move || {
        let plan = NodeReport::gather(&Default::default(), false, ort_library.as_deref()).plan;
        let mut config = RegistryConfig::new(repository, backend);
        config.plan = plan;
        Registry::open(config)
    })
    .await
    .map_err(|e| ImportError::Check(e.to_string()))?
    .map_err(|e| ImportError::Check(e.to_string()))?;
    let scorer = Scorer::new(Arc::new(registry), ScoringLimits::default(), false);
    scorer.finish_start_up();
    let arrival = Instant::now();
    let served = scorer
        .model(model, None, arrival)
        .await
        .map_err(|e| ImportError::Check(format!("the converted model does not load: {e}")))?;
    let body = serde_json::to_vec(request).map_err(|e| ImportError::Check(e.to_string()))?;
    let inputs = served
        .pipeline
        .decode_json(&body)
        .map_err(|e| ImportError::Check(format!("the sample request is refused: {e}")))?;
    let slot = scorer
        .admit()
        .await
        .map_err(|e| ImportError::Check(e.to_string()))?;
    let output = scorer
        .run_any_rows(slot, &served, inputs, arrival)
        .await
        .map_err(|e| ImportError::Check(format!("scoring the sample request failed: {e}")))?;
    let reply = served
        .pipeline
        .encode(&output.outputs)
        .map_err(|e| ImportError::Check(e.to_string()))?;
    let answer = serde_json::to_value(reply).map_err(|e| ImportError::Check(e.to_string()))?;
    let engine = served.engine.to_string();
    Ok((answer, engine))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_compared_scaled_and_texts_exactly() {
        let c = compare(
            &json!([198.95, 0.5, "setosa"]),
            &json!([198.96, 0.5, "setosa"]),
        );
        assert!(c.mismatch.is_none());
        assert!((c.largest_difference - 0.01).abs() < 1e-9);
        assert!((c.largest_scaled_difference - 0.01 / 198.95).abs() < 1e-12);
        assert_eq!(c.at, "[0]");
        assert_eq!((c.numbers, c.exact), (2, 1));
        assert!(c.within(1e-4) && !c.within(1e-6));
        let c = compare(&json!(["setosa"]), &json!(["virginica"]));
        assert_eq!(
            c.mismatch.as_deref(),
            Some("[0]: \"setosa\" against \"virginica\"")
        );
    }

    #[test]
    fn shapes_and_kinds_must_agree() {
        let c = compare(&json!([1.0, 2.0]), &json!([[1.0], [2.0]]));
        assert_eq!(c.mismatch.as_deref(), Some("[0]: a number against a list"));
        let c = compare(&json!([1, 2]), &json!([1]));
        assert!(
            c.mismatch
                .unwrap()
                .contains("a list of 2 against a list of 1")
        );
        let c = compare(&json!({"a": 1}), &json!({"a": 1, "b": 2}));
        assert!(c.mismatch.unwrap().contains("\"b\" is extra"));
        assert!(!compare(&json!([]), &json!({})).within(1.0));
    }

    proptest::proptest! {
        #[test]
        fn an_answer_equals_itself_and_the_bound_is_symmetric_in_size(
            values in proptest::collection::vec(-1e6f64..1e6, 0..20),
            noise in 0f64..1.0,
        ) {
            let same = compare(&json!(values), &json!(values));
            proptest::prop_assert!(same.within(0.0));
            let shifted: Vec<f64> = values.iter().map(|v| v + noise).collect();
            let c = compare(&json!(values), &json!(shifted));
            proptest::prop_assert!(c.mismatch.is_none());
            proptest::prop_assert!(c.largest_scaled_difference <= noise + 1e-6);
        }
    }
}
