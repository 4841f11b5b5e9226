//! What the router serves, as the management API changes it and the state file keeps it.
//!
//! Two kinds of webservice share one namespace, as on Azure: a *service* (AksWebservice: one
//! deployment at `/api/v1/service/{name}`) and an *endpoint* (AksEndpoint: up to six versions
//! behind `/api/v1/endpoint/{name}`, traffic split by `traffic_percentile`, what no version
//! claims going to the default version). Every change is a pure function of the catalog: it is
//! applied to a copy, the copy's invariants are checked, and a refused change leaves the
//! catalog as it was.

use super::kube::KubeTarget;
use super::{DataCollection, collect};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Azure's limit on the versions of one endpoint.
pub const MAX_VERSIONS: usize = 6;

/// The version name a service's single deployment carries.
pub const SERVICE_VERSION: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Service,
    Endpoint,
}

impl Kind {
    /// The path segment of its scoring URI and of its management routes.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Endpoint => "endpoints",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Endpoint => "endpoint",
        }
    }
}

/// How callers of a webservice's scoring routes authenticate. One mode at a time: Azure does
/// not allow key and token authentication together.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `Authorization: Bearer <primary or secondary key>` (Azure's default on AKS).
    #[default]
    Key,
    /// `Authorization: Bearer <JWT>` issued by the management API.
    Token,
    /// No authentication.
    None,
}

/// Which of a webservice's two keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyName {
    Primary,
    Secondary,
}

/// Where a version's replicas come from and what they serve.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// The model repository of local replicas (Kubernetes pods bring their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_repository: Option<PathBuf>,
    /// Azure's deploymentconfig.json: limits, autoscaler, initial keys and auth mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_config: Option<PathBuf>,
    /// Azure's inferenceconfig.json: local replicas serve its entry script (score.py).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_config: Option<PathBuf>,
    /// More arguments for each local replica's `modelpod serve`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serve_args: Vec<String>,
    /// Replicas are this Deployment's pods instead of local processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeTarget>,
    /// Model data collection for this deployment's scored requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_collection: Option<DataCollection>,
}

impl DeploymentSpec {
    fn check(&self) -> Result<(), CatalogError> {
        if self.kubernetes.is_none()
            && self.model_repository.is_none()
            && self.inference_config.is_none()
        {
            return Err(CatalogError::Invalid(
                "a deployment with local replicas needs a model_repository or an inference_config"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One version of an endpoint, or a service's single deployment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Version {
    pub name: String,
    pub deployment: DeploymentSpec,
    /// Percentage of the endpoint's requests sent here; the default version also takes what
    /// no version claims.
    pub traffic_percentile: f64,
    pub is_default: bool,
    /// At most one control version per endpoint; every other version is a treatment.
    pub is_control_version: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Version {
    /// Its designation in data collection and logs.
    pub fn designation(&self, kind: Kind) -> &'static str {
        match (kind, self.is_control_version) {
            (Kind::Service, _) => "default",
            (Kind::Endpoint, true) => "control",
            (Kind::Endpoint, false) => "treatment",
        }
    }
}

/// A service or an endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Webservice {
    pub kind: Kind,
    pub auth: AuthMode,
    pub primary_key: String,
    pub secondary_key: String,
    /// Signed into every token issued for this webservice and changed whenever its tokens
    /// must die: when it is created (a deleted and re-created one refuses the old one's
    /// tokens), when its auth mode changes, and when a key is regenerated.
    #[serde(default = "modelpod_http::auth::random_key")]
    pub token_generation: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// A service has exactly one; an endpoint up to [`MAX_VERSIONS`], in creation order.
    pub versions: Vec<Version>,
}

impl Webservice {
    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// The index of the version that takes a request drawn at `draw` in `[0, 100)`: the
    /// non-default versions' percentiles are laid end to end, and whatever falls beyond them
    /// goes to the default version.
    pub fn pick(&self, draw: f64) -> Option<usize> {
        let mut edge = 0.0;
        for (index, version) in self.versions.iter().enumerate() {
            if version.is_default {
                continue;
            }
            edge += version.traffic_percentile;
            if draw < edge {
                return Some(index);
            }
        }
        self.versions.iter().position(|v| v.is_default)
    }

    /// The share of traffic version `index` takes, in percent: its own percentile, or for
    /// the default version whatever the others leave (what [`Webservice::pick`] sends it).
    pub fn traffic_share(&self, index: usize) -> f64 {
        let version = &self.versions[index];
        if !version.is_default {
            return version.traffic_percentile;
        }
        let others: f64 = self
            .versions
            .iter()
            .filter(|v| !v.is_default)
            .map(|v| v.traffic_percentile)
            .sum();
        (100.0 - others).max(0.0)
    }

    fn check(&self, name: &str) -> Result<(), CatalogError> {
        match self.kind {
            Kind::Service => {
                if self.versions.len() != 1 || !self.versions[0].is_default {
                    return Err(CatalogError::Invalid(format!(
                        "service {name} has exactly one deployment"
                    )));
                }
            }
            Kind::Endpoint => {
                if self.versions.len() > MAX_VERSIONS {
                    return Err(CatalogError::Invalid(format!(
                        "endpoint {name} would have {} versions; at most {MAX_VERSIONS} are allowed",
                        self.versions.len()
                    )));
                }
                let defaults = self.versions.iter().filter(|v| v.is_default).count();
                if !self.versions.is_empty() && defaults != 1 {
                    return Err(CatalogError::Invalid(format!(
                        "endpoint {name} must have exactly one default version, not {defaults}"
                    )));
                }
                let controls: Vec<&str> = self
                    .versions
                    .iter()
                    .filter(|v| v.is_control_version)
                    .map(|v| v.name.as_str())
                    .collect();
                if controls.len() > 1 {
                    return Err(CatalogError::Invalid(format!(
                        "endpoint {name} can have one control version; {} are marked control",
                        controls.join(" and ")
                    )));
                }
                let total: f64 = self.versions.iter().map(|v| v.traffic_percentile).sum();
                if total > 100.0 + 1e-9 {
                    return Err(CatalogError::Invalid(format!(
                        "the traffic percentiles of endpoint {name}'s versions would add up to {total}; at most 100"
                    )));
                }
            }
        }
        for (index, version) in self.versions.iter().enumerate() {
            check_name("version", &version.name)?;
            if self.versions[..index]
                .iter()
                .any(|v| v.name == version.name)
            {
                return Err(CatalogError::Conflict(format!(
                    "{} {name} already has a version {}",
                    self.kind.singular(),
                    version.name
                )));
            }
            let percentile = version.traffic_percentile;
            if !(0.0..=100.0).contains(&percentile) {
                return Err(CatalogError::Invalid(format!(
                    "traffic_percentile of version {} must be between 0 and 100, not {percentile}",
                    version.name
                )));
            }
            version.deployment.check()?;
        }
        Ok(())
    }
}

/// The router's whole persisted state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Catalog {
    /// The management API's credential.
    pub admin_key: String,
    /// The HS256 secret that signs service tokens (base64url).
    pub token_secret: String,
    pub webservices: BTreeMap<String, Webservice>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogError {
    /// The change breaks a rule: 400.
    #[error("{0}")]
    Invalid(String),
    /// Something of that name exists already: 409.
    #[error("{0}")]
    Conflict(String),
    /// No such webservice or version: 404.
    #[error("{0}")]
    NotFound(String),
}

/// Names appear in URL paths and file paths: letters, digits, `-`, `_` and `.`, not starting
/// with a dot.
pub fn check_name(what: &str, name: &str) -> Result<(), CatalogError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "{what} name '{name}' must be 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// The fields of a version a change may set; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_percentile: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_default: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_control_version: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// The fields of a webservice a change may set. `auth` is modelpod's form; `auth_enabled` and
/// `token_auth_enabled` are Azure's (`update(auth_enabled=..., token_auth_enabled=...)`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebserviceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_auth_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

impl WebserviceUpdate {
    /// The mode these fields ask for, given the current one.
    pub fn auth_mode(&self, current: AuthMode) -> Result<AuthMode, CatalogError> {
        if self.auth.is_some() && (self.auth_enabled.is_some() || self.token_auth_enabled.is_some())
        {
            return Err(CatalogError::Invalid(
                "give either auth or auth_enabled/token_auth_enabled, not both".into(),
            ));
        }
        if let Some(mode) = self.auth {
            return Ok(mode);
        }
        let key = self.auth_enabled.unwrap_or(current == AuthMode::Key);
        let token = self
            .token_auth_enabled
            .unwrap_or(current == AuthMode::Token);
        // Turning one on implicitly turns the other off unless the change names both.
        match (key, token) {
            (true, true)
                if self.auth_enabled == Some(true) && self.token_auth_enabled.is_none() =>
            {
                Ok(AuthMode::Key)
            }
            (true, true)
                if self.token_auth_enabled == Some(true) && self.auth_enabled.is_none() =>
            {
                Ok(AuthMode::Token)
            }
            (true, true) => Err(CatalogError::Invalid(
                "key and token authentication cannot both be enabled for one webservice".into(),
            )),
            (true, false) => Ok(AuthMode::Key),
            (false, true) => Ok(AuthMode::Token),
            (false, false) => Ok(AuthMode::None),
        }
    }
}

impl Catalog {
    pub fn new(admin_key: String, token_secret: String) -> Catalog {
        Catalog {
            admin_key,
            token_secret,
            webservices: BTreeMap::new(),
        }
    }

    /// Every rule at once; also run on a loaded state file, so a hand-edited one that breaks a
    /// rule is refused at start.
    pub fn check(&self) -> Result<(), CatalogError> {
        for (name, webservice) in &self.webservices {
            check_name(webservice.kind.singular(), name)?;
            webservice.check(name)?;
        }
        Ok(())
    }

    pub fn get(&self, kind: Kind, name: &str) -> Result<&Webservice, CatalogError> {
        self.webservices
            .get(name)
            .filter(|w| w.kind == kind)
            .ok_or_else(|| {
                CatalogError::NotFound(format!("{} '{name}' not found", kind.singular()))
            })
    }

    fn get_mut(&mut self, kind: Kind, name: &str) -> Result<&mut Webservice, CatalogError> {
        self.webservices
            .get_mut(name)
            .filter(|w| w.kind == kind)
            .ok_or_else(|| {
                CatalogError::NotFound(format!("{} '{name}' not found", kind.singular()))
            })
    }

    /// Applies `change` to a copy and returns the copy if every rule still holds.
    fn changed(
        &self,
        change: impl FnOnce(&mut Catalog) -> Result<(), CatalogError>,
    ) -> Result<Catalog, CatalogError> {
        let mut next = self.clone();
        change(&mut next)?;
        next.check()?;
        Ok(next)
    }

    /// Adds a webservice. A service's versions are its one deployment; an endpoint's first
    /// version becomes its default.
    pub fn create(&self, name: &str, mut webservice: Webservice) -> Result<Catalog, CatalogError> {
        check_name(webservice.kind.singular(), name)?;
        if let Some(existing) = self.webservices.get(name) {
            return Err(CatalogError::Conflict(format!(
                "a {} named '{name}' exists already",
                existing.kind.singular()
            )));
        }
        if webservice.kind == Kind::Service {
            for version in &mut webservice.versions {
                version.name = SERVICE_VERSION.into();
                version.is_default = true;
                version.traffic_percentile = 100.0;
                version.is_control_version = false;
            }
        } else if !webservice.versions.iter().any(|v| v.is_default)
            && let Some(first) = webservice.versions.first_mut()
        {
            first.is_default = true;
        }
        self.changed(|next| {
            next.webservices.insert(name.to_string(), webservice);
            Ok(())
        })
    }

    pub fn delete(&self, kind: Kind, name: &str) -> Result<Catalog, CatalogError> {
        self.get(kind, name)?;
        self.changed(|next| {
            next.webservices.remove(name);
            Ok(())
        })
    }

    pub fn update(
        &self,
        kind: Kind,
        name: &str,
        update: &WebserviceUpdate,
    ) -> Result<Catalog, CatalogError> {
        self.changed(|next| {
            let webservice = next.get_mut(kind, name)?;
            let auth = update.auth_mode(webservice.auth)?;
            if auth != webservice.auth {
                webservice.auth = auth;
                webservice.token_generation = modelpod_http::auth::random_key();
            }
            if let Some(description) = &update.description {
                webservice.description = description.clone();
            }
            if let Some(tags) = &update.tags {
                webservice.tags = tags.clone();
            }
            Ok(())
        })
    }

    /// Replaces one key with `new_key`; the other is untouched.
    pub fn set_key(
        &self,
        kind: Kind,
        name: &str,
        which: KeyName,
        new_key: String,
    ) -> Result<Catalog, CatalogError> {
        self.changed(|next| {
            let webservice = next.get_mut(kind, name)?;
            match which {
                KeyName::Primary => webservice.primary_key = new_key,
                KeyName::Secondary => webservice.secondary_key = new_key,
            }
            webservice.token_generation = modelpod_http::auth::random_key();
            Ok(())
        })
    }

    /// Adds a version to an endpoint; one marked default takes that role from the old default,
    /// and an endpoint's first version is its default.
    pub fn create_version(
        &self,
        endpoint: &str,
        version: Version,
    ) -> Result<Catalog, CatalogError> {
        self.changed(|next| {
            let webservice = next.get_mut(Kind::Endpoint, endpoint)?;
            if webservice.versions.len() == MAX_VERSIONS {
                return Err(CatalogError::Invalid(format!(
                    "endpoint {endpoint} has {MAX_VERSIONS} versions already, the most allowed"
                )));
            }
            let mut version = version;
            if webservice.versions.is_empty() {
                version.is_default = true;
            } else if version.is_default {
                for other in &mut webservice.versions {
                    other.is_default = false;
                }
            }
            webservice.versions.push(version);
            Ok(())
        })
    }

    pub fn update_version(
        &self,
        endpoint: &str,
        version: &str,
        update: &VersionUpdate,
    ) -> Result<Catalog, CatalogError> {
        self.changed(|next| {
            let webservice = next.get_mut(Kind::Endpoint, endpoint)?;
            let index = version_index(webservice, endpoint, version)?;
            match update.is_default {
                Some(true) => {
                    for other in &mut webservice.versions {
                        other.is_default = false;
                    }
                    webservice.versions[index].is_default = true;
                }
                Some(false) if webservice.versions[index].is_default => {
                    return Err(CatalogError::Invalid(format!(
                        "version {version} is endpoint {endpoint}'s default; an endpoint always has one, so make another version the default instead"
                    )));
                }
                _ => {}
            }
            let target = &mut webservice.versions[index];
            if let Some(percentile) = update.traffic_percentile {
                target.traffic_percentile = percentile;
            }
            if let Some(control) = update.is_control_version {
                target.is_control_version = control;
            }
            if let Some(description) = &update.description {
                target.description = description.clone();
            }
            if let Some(tags) = &update.tags {
                target.tags = tags.clone();
            }
            Ok(())
        })
    }

    /// Removes a version. The default goes only when it is the last one.
    pub fn delete_version(&self, endpoint: &str, version: &str) -> Result<Catalog, CatalogError> {
        self.changed(|next| {
            let webservice = next.get_mut(Kind::Endpoint, endpoint)?;
            let index = version_index(webservice, endpoint, version)?;
            if webservice.versions[index].is_default && webservice.versions.len() > 1 {
                return Err(CatalogError::Invalid(format!(
                    "version {version} is endpoint {endpoint}'s default; make another version the default before deleting it"
                )));
            }
            webservice.versions.remove(index);
            Ok(())
        })
    }
}

fn version_index(
    webservice: &Webservice,
    endpoint: &str,
    version: &str,
) -> Result<usize, CatalogError> {
    webservice
        .versions
        .iter()
        .position(|v| v.name == version)
        .ok_or_else(|| {
            CatalogError::NotFound(format!("endpoint {endpoint} has no version '{version}'"))
        })
}

impl DataCollection {
    pub fn jsonl(root: PathBuf) -> DataCollection {
        DataCollection {
            root,
            format: collect::Format::Jsonl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn deployment() -> DeploymentSpec {
        DeploymentSpec {
            model_repository: Some("models".into()),
            ..Default::default()
        }
    }

    fn version(name: &str, percentile: f64) -> Version {
        Version {
            name: name.into(),
            deployment: deployment(),
            traffic_percentile: percentile,
            is_default: false,
            is_control_version: false,
            description: String::new(),
            tags: BTreeMap::new(),
        }
    }

    fn webservice(kind: Kind, versions: Vec<Version>) -> Webservice {
        Webservice {
            kind,
            auth: AuthMode::Key,
            primary_key: "p".into(),
            secondary_key: "s".into(),
            token_generation: "g".into(),
            description: String::new(),
            tags: BTreeMap::new(),
            versions,
        }
    }

    fn with_endpoint(versions: &[(&str, f64)]) -> Catalog {
        let mut catalog = Catalog::new("admin".into(), "secret".into())
            .create("ep", webservice(Kind::Endpoint, vec![]))
            .unwrap();
        for (name, percentile) in versions {
            catalog = catalog
                .create_version("ep", version(name, *percentile))
                .unwrap();
        }
        catalog
    }

    fn invalid(result: Result<Catalog, CatalogError>, says: &str) {
        match result {
            Err(CatalogError::Invalid(message)) => assert!(message.contains(says), "{message}"),
            other => panic!("expected a refusal saying '{says}', got {other:?}"),
        }
    }

    #[test]
    fn the_first_version_is_the_default_and_takes_what_no_version_claims() {
        let catalog = with_endpoint(&[("blue", 0.0), ("green", 20.0)]);
        let endpoint = catalog.get(Kind::Endpoint, "ep").unwrap();
        assert!(endpoint.versions[0].is_default);
        assert_eq!(endpoint.pick(0.0), Some(1));
        assert_eq!(endpoint.pick(19.99), Some(1));
        assert_eq!(endpoint.pick(20.0), Some(0));
        assert_eq!(endpoint.pick(99.99), Some(0));
        // What the listing shows is what pick does: the default takes the other 80 %.
        assert_eq!(endpoint.traffic_share(0), 80.0);
        assert_eq!(endpoint.traffic_share(1), 20.0);
    }

    #[test]
    fn refused_changes_say_why_and_change_nothing() {
        let catalog = with_endpoint(&[("a", 50.0), ("b", 30.0)]);
        invalid(
            catalog.create_version("ep", version("c", 30.0)),
            "add up to 110",
        );
        invalid(
            catalog.update_version(
                "ep",
                "b",
                &VersionUpdate {
                    traffic_percentile: Some(51.0),
                    ..Default::default()
                },
            ),
            "at most 100",
        );
        let controlled = catalog
            .update_version(
                "ep",
                "a",
                &VersionUpdate {
                    is_control_version: Some(true),
                    ..Default::default()
                },
            )
            .unwrap();
        invalid(
            controlled.update_version(
                "ep",
                "b",
                &VersionUpdate {
                    is_control_version: Some(true),
                    ..Default::default()
                },
            ),
            "one control version",
        );
        invalid(
            catalog.delete_version("ep", "a"),
            "make another version the default",
        );
        invalid(
            catalog.update_version(
                "ep",
                "a",
                &VersionUpdate {
                    is_default: Some(false),
                    ..Default::default()
                },
            ),
            "always has one",
        );
        invalid(
            catalog.create_version("ep", version("bad name", 0.0)),
            "version name",
        );
        invalid(
            catalog.create_version("ep", version("n", -1.0)),
            "between 0 and 100",
        );
        assert!(matches!(
            catalog.create_version("ep", version("a", 0.0)),
            Err(CatalogError::Conflict(_))
        ));
        let full = with_endpoint(&[
            ("v1", 0.0),
            ("v2", 0.0),
            ("v3", 0.0),
            ("v4", 0.0),
            ("v5", 0.0),
            ("v6", 0.0),
        ]);
        invalid(
            full.create_version("ep", version("v7", 0.0)),
            "6 versions already",
        );
        assert_eq!(
            catalog,
            with_endpoint(&[("a", 50.0), ("b", 30.0)]),
            "nothing changed"
        );
    }

    #[test]
    fn a_new_default_takes_the_role_and_the_old_one_can_then_go() {
        let catalog = with_endpoint(&[("a", 0.0), ("b", 20.0)])
            .update_version(
                "ep",
                "b",
                &VersionUpdate {
                    is_default: Some(true),
                    ..Default::default()
                },
            )
            .unwrap()
            .delete_version("ep", "a")
            .unwrap();
        let endpoint = catalog.get(Kind::Endpoint, "ep").unwrap();
        assert_eq!(endpoint.versions.len(), 1);
        assert!(endpoint.versions[0].is_default);
        // The last version may go, default or not.
        assert!(catalog.delete_version("ep", "b").is_ok());
    }

    #[test]
    fn names_are_one_namespace_and_services_have_one_deployment() {
        let catalog = with_endpoint(&[]);
        assert!(matches!(
            catalog.create("ep", webservice(Kind::Service, vec![version("x", 0.0)])),
            Err(CatalogError::Conflict(_))
        ));
        let catalog = catalog
            .create("svc", webservice(Kind::Service, vec![version("x", 3.0)]))
            .unwrap();
        let service = catalog.get(Kind::Service, "svc").unwrap();
        assert_eq!(service.versions[0].name, SERVICE_VERSION);
        assert_eq!(service.pick(99.0), Some(0));
        assert!(matches!(
            catalog.get(Kind::Endpoint, "svc"),
            Err(CatalogError::NotFound(_))
        ));
        invalid(
            catalog.create("none", webservice(Kind::Service, vec![])),
            "exactly one deployment",
        );
        invalid(
            catalog.create("a/b", webservice(Kind::Endpoint, vec![])),
            "endpoint name",
        );
    }

    #[test]
    fn key_and_token_auth_are_never_both_on() {
        let update = |auth_enabled, token_auth_enabled| WebserviceUpdate {
            auth_enabled,
            token_auth_enabled,
            ..Default::default()
        };
        assert_eq!(
            update(None, Some(true)).auth_mode(AuthMode::Key),
            Ok(AuthMode::Token)
        );
        assert_eq!(
            update(Some(true), None).auth_mode(AuthMode::Token),
            Ok(AuthMode::Key)
        );
        assert_eq!(
            update(Some(false), None).auth_mode(AuthMode::Key),
            Ok(AuthMode::None)
        );
        assert!(
            update(Some(true), Some(true))
                .auth_mode(AuthMode::None)
                .is_err()
        );
        let both = WebserviceUpdate {
            auth: Some(AuthMode::Key),
            token_auth_enabled: Some(true),
            ..Default::default()
        };
        assert!(both.auth_mode(AuthMode::None).is_err());
    }

    #[derive(Debug, Clone)]
    enum Change {
        Create(u8, f64, bool, bool),
        Update(u8, Option<f64>, Option<bool>, Option<bool>),
        Delete(u8),
    }

    fn change() -> impl Strategy<Value = Change> {
        let percentile = prop_oneof![Just(0.0), 0.0..60.0, Just(100.0), Just(150.0)];
        prop_oneof![
            (0u8..8, percentile.clone(), any::<bool>(), any::<bool>())
                .prop_map(|(v, p, d, c)| Change::Create(v, p, d, c)),
            (
                0u8..8,
                proptest::option::of(percentile),
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>())
            )
                .prop_map(|(v, p, d, c)| Change::Update(v, p, d, c)),
            (0u8..8).prop_map(Change::Delete),
        ]
    }

    proptest! {
        /// Whatever sequence of changes is asked for, each one is applied whole or not at
        /// all, and the endpoint's rules hold after every step.
        #[test]
        fn any_sequence_of_changes_keeps_every_rule(changes in proptest::collection::vec(change(), 1..40)) {
            let mut catalog = with_endpoint(&[]);
            for change in changes {
                let result = match &change {
                    Change::Create(v, p, d, c) => {
                        let mut new = version(&format!("v{v}"), *p);
                        new.is_default = *d;
                        new.is_control_version = *c;
                        catalog.create_version("ep", new)
                    }
                    Change::Update(v, p, d, c) => catalog.update_version("ep", &format!("v{v}"), &VersionUpdate {
                        traffic_percentile: *p,
                        is_default: *d,
                        is_control_version: *c,
                        ..Default::default()
                    }),
                    Change::Delete(v) => catalog.delete_version("ep", &format!("v{v}")),
                };
                if let Ok(next) = result {
                    catalog = next;
                }
                let endpoint = catalog.get(Kind::Endpoint, "ep").unwrap();
                prop_assert!(endpoint.versions.len() <= MAX_VERSIONS);
                prop_assert!(endpoint.versions.iter().map(|v| v.traffic_percentile).sum::<f64>() <= 100.0 + 1e-9);
                prop_assert!(endpoint.versions.iter().filter(|v| v.is_control_version).count() <= 1);
                if !endpoint.versions.is_empty() {
                    prop_assert_eq!(endpoint.versions.iter().filter(|v| v.is_default).count(), 1);
                    // Every draw lands on a version.
                    prop_assert!(endpoint.pick(99.999).is_some());
                }
            }
        }
    }
}
