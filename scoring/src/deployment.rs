//! Azure Machine Learning's `deploymentconfig.json` (AKS web service), read field for field
//! with Azure's defaults, and the scoring limits a container runs under. Fields modelpod does
//! not act on yet are accepted and kept, so a file that deploys on Azure is never refused
//! here; a field Azure does not know either is warned about, with the nearest valid name (a
//! misspelt `maxConcurrentRequestsPerContainer` would otherwise fall back to 1 unseen).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Azure's defaults for an AKS web service.
pub mod defaults {
    pub const SCORING_TIMEOUT_MS: u64 = 60_000;
    pub const MAX_CONCURRENT_REQUESTS_PER_CONTAINER: usize = 1;
    pub const MAX_QUEUE_WAIT_MS: u64 = 500;
    pub const AUTOSCALE_MIN_REPLICAS: u32 = 1;
    pub const AUTOSCALE_MAX_REPLICAS: u32 = 10;
    pub const AUTOSCALE_REFRESH_SECONDS: u32 = 1;
    pub const AUTOSCALE_TARGET_UTILIZATION: u32 = 70;
    /// Azure's inference server port.
    pub const SCORING_SERVER_PORT: u16 = 5001;
    /// The v2 gRPC port, as Triton's.
    pub const GRPC_PORT: u16 = 8001;
    /// Azure's request body limit (100 MB).
    pub const MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;
}

/// What one scoring container admits: the limits a scoring server enforces and its router
/// forwards by. Replicas report theirs in every busy-state answer, so a router never holds a
/// request to limits other than the replica's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScoringLimits {
    /// maxConcurrentRequestsPerContainer.
    pub max_concurrent_requests: usize,
    /// maxQueueWaitMs: how long a request may wait for a scoring slot.
    #[serde(with = "millis")]
    pub max_queue_wait: Duration,
    /// scoringTimeoutMs: from arrival to answer.
    #[serde(with = "millis")]
    pub scoring_timeout: Duration,
    /// The largest request body.
    pub max_request_bytes: usize,
}

impl Default for ScoringLimits {
    fn default() -> ScoringLimits {
        ScoringLimits {
            max_concurrent_requests: defaults::MAX_CONCURRENT_REQUESTS_PER_CONTAINER,
            max_queue_wait: Duration::from_millis(defaults::MAX_QUEUE_WAIT_MS),
            scoring_timeout: Duration::from_millis(defaults::SCORING_TIMEOUT_MS),
            max_request_bytes: defaults::MAX_REQUEST_BYTES,
        }
    }
}

impl ScoringLimits {
    /// These limits with the ones given (in Azure's units) put in their place: the one
    /// resolution of limits that deploymentconfig.json and `serve`'s settings both go through.
    pub fn overridden(
        self,
        max_concurrent_requests: Option<usize>,
        max_queue_wait_ms: Option<u64>,
        scoring_timeout_ms: Option<u64>,
        max_request_bytes: Option<usize>,
    ) -> ScoringLimits {
        ScoringLimits {
            max_concurrent_requests: max_concurrent_requests
                .unwrap_or(self.max_concurrent_requests),
            max_queue_wait: max_queue_wait_ms.map_or(self.max_queue_wait, Duration::from_millis),
            scoring_timeout: scoring_timeout_ms.map_or(self.scoring_timeout, Duration::from_millis),
            max_request_bytes: max_request_bytes.unwrap_or(self.max_request_bytes),
        }
    }
}

/// Durations as whole milliseconds, the unit of Azure's fields.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfig {
    pub compute_type: Option<String>,
    pub scoring_timeout_ms: Option<u64>,
    pub max_concurrent_requests_per_container: Option<usize>,
    pub max_queue_wait_ms: Option<u64>,
    pub auth_enabled: Option<bool>,
    pub token_auth_enabled: Option<bool>,
    pub keys: Option<Keys>,
    pub num_replicas: Option<u32>,
    pub auto_scaler: Option<AutoScaler>,
    pub container_resource_requirements: Option<serde_json::Value>,
    pub liveness_probe_requirements: Option<serde_json::Value>,
    pub data_collection: Option<serde_json::Value>,
    pub app_insights_enabled: Option<bool>,
    pub namespace: Option<String>,
    pub description: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub properties: Option<serde_json::Value>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Azure's AKS deployment configuration fields, at the top level and in its objects.
const FIELDS: &[&str] = &[
    "computeType",
    "scoringTimeoutMs",
    "maxConcurrentRequestsPerContainer",
    "maxQueueWaitMs",
    "authEnabled",
    "tokenAuthEnabled",
    "keys",
    "numReplicas",
    "autoScaler",
    "containerResourceRequirements",
    "livenessProbeRequirements",
    "dataCollection",
    "appInsightsEnabled",
    "namespace",
    "description",
    "tags",
    "properties",
];
const KEYS_FIELDS: &[&str] = &["primaryKey", "secondaryKey"];
const AUTOSCALER_FIELDS: &[&str] = &[
    "autoscaleEnabled",
    "minReplicas",
    "maxReplicas",
    "refreshPeriodInSeconds",
    "targetUtilization",
];

/// "`prefix.name` is not a deploymentconfig.json field (did you mean `…`?)" for each unknown.
fn describe_unknown(
    prefix: &str,
    unknown: &BTreeMap<String, serde_json::Value>,
    known: &[&str],
) -> Vec<String> {
    unknown
        .keys()
        .map(|name| {
            let nearest = known
                .iter()
                .map(|k| {
                    (
                        strsim::jaro_winkler(&name.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                        k,
                    )
                })
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(score, _)| *score > 0.8)
                .map(|(_, k)| format!(" (did you mean `{prefix}{k}`?)"))
                .unwrap_or_default();
            format!("`{prefix}{name}` is not a deploymentconfig.json field and is ignored{nearest}")
        })
        .collect()
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoScaler {
    pub autoscale_enabled: Option<bool>,
    pub min_replicas: Option<u32>,
    pub max_replicas: Option<u32>,
    pub refresh_period_in_seconds: Option<u32>,
    pub target_utilization: Option<u32>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum AzureConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl DeploymentConfig {
    pub fn read(path: &Path) -> Result<DeploymentConfig, AzureConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| AzureConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let config: DeploymentConfig =
            serde_json::from_str(&text).map_err(|e| AzureConfigError::Invalid {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if let Some(kind) = &config.compute_type
            && !kind.eq_ignore_ascii_case("aks")
            && !kind.eq_ignore_ascii_case("local")
        {
            tracing::warn!(compute_type = %kind, "deploymentconfig.json is not for AKS; reading the fields it shares");
        }
        for warning in config.unknown_fields() {
            tracing::warn!(file = %path.display(), "{warning}");
        }
        Ok(config)
    }

    /// A warning for each field neither Azure nor modelpod knows.
    pub fn unknown_fields(&self) -> Vec<String> {
        let mut warnings = describe_unknown("", &self.unknown, FIELDS);
        if let Some(keys) = &self.keys {
            warnings.extend(describe_unknown("keys.", &keys.unknown, KEYS_FIELDS));
        }
        if let Some(scaler) = &self.auto_scaler {
            warnings.extend(describe_unknown(
                "autoScaler.",
                &scaler.unknown,
                AUTOSCALER_FIELDS,
            ));
        }
        warnings
    }

    /// The limits this file sets over Azure's defaults.
    pub fn limits(&self) -> ScoringLimits {
        ScoringLimits::default().overridden(
            self.max_concurrent_requests_per_container,
            self.max_queue_wait_ms,
            self.scoring_timeout_ms,
            None,
        )
    }

    /// The keys the file sets, primary first.
    pub fn key_list(&self) -> Vec<String> {
        let Some(keys) = &self.keys else {
            return Vec::new();
        };
        [&keys.primary_key, &keys.secondary_key]
            .into_iter()
            .flatten()
            .filter(|k| !k.is_empty())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_azure_file_with_fields_we_do_not_use() {
        let config: DeploymentConfig = serde_json::from_str(
            r#"{
              "computeType": "aks",
              "autoScaler": {"autoscaleEnabled": true, "minReplicas": 1, "maxReplicas": 4, "targetUtilization": 70},
              "containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1.0},
              "scoringTimeoutMs": 5000,
              "maxConcurrentRequestsPerContainer": 8,
              "maxQueueWaitMs": 250,
              "keys": {"primaryKey": "p", "secondaryKey": "s"},
              "livenessProbeRequirements": {"periodSeconds": 10},
              "somethingNew": 1
            }"#,
        )
        .unwrap();
        assert_eq!(config.scoring_timeout_ms, Some(5000));
        assert_eq!(config.max_concurrent_requests_per_container, Some(8));
        assert_eq!(config.auto_scaler.as_ref().unwrap().max_replicas, Some(4));
        assert_eq!(config.key_list(), vec!["p", "s"]);
        assert_eq!(
            config.unknown_fields(),
            ["`somethingNew` is not a deploymentconfig.json field and is ignored"]
        );
    }

    #[test]
    fn misspelt_fields_are_named_with_the_nearest_valid_one() {
        let config: DeploymentConfig = serde_json::from_str(
            r#"{"maxConcurrentRequestPerContainer": 8, "autoScaler": {"maxReplica": 3}, "keys": {"primarykey": "p"}}"#,
        )
        .unwrap();
        assert_eq!(config.max_concurrent_requests_per_container, None);
        let warnings = config.unknown_fields();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("did you mean `maxConcurrentRequestsPerContainer`"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("did you mean `keys.primaryKey`"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains("did you mean `autoScaler.maxReplicas`"),
            "{warnings:?}"
        );
    }
}
