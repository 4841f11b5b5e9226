//! The router's control plane: the catalog of webservices, the state file that keeps it, the
//! deployments running for it, and the routing table the scoring path reads.
//!
//! A change is committed in this order: the new catalog is checked, deployments it adds are
//! started, the catalog is saved (atomically), the routing table is swapped, and deployments
//! it dropped are stopped. A change that fails at any step before the swap stops what it
//! started and leaves the catalog, the file and the table as they were.

use super::access::Tokens;
use super::catalog::{AuthMode, Catalog, CatalogError, DeploymentSpec, Kind, Version, Webservice};
use super::deployment::{Deployment, DeploymentId, DeploymentSettings};
use super::store::StateFile;
use super::{RECENT_REQUESTS, RequestLog};
use modelpod_http::ApiError;
use modelpod_http::auth::random_key;
use modelpod_scoring::deployment::DeploymentConfig;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// A webservice as the scoring path sees it: its catalog entry, and the deployment of each
/// version, in the same order.
pub struct LiveWebservice {
    pub name: String,
    pub record: Webservice,
    pub deployments: Vec<Arc<Deployment>>,
    /// The most recent requests, newest last, for the logs route. Survives changes to the
    /// webservice, not its deletion.
    pub recent: Arc<parking_lot::Mutex<VecDeque<RequestLog>>>,
}

impl LiveWebservice {
    /// Logs a routed request and keeps it in the webservice's recent log.
    pub fn log_request(&self, entry: RequestLog) {
        tracing::info!(
            target: "modelpod::access",
            service = %entry.service,
            version = %entry.version,
            request_id = %entry.request_id,
            method = %entry.method,
            path = %entry.path,
            status = entry.status,
            replica = entry.replica.as_deref().unwrap_or("-"),
            queue_us = entry.queue_us,
            upstream_us = entry.upstream_us,
            total_us = entry.total_us,
            "request"
        );
        let mut recent = self.recent.lock();
        if recent.len() == RECENT_REQUESTS {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// Its entry in the management API's listings; keys are never shown here.
    pub fn status(&self) -> serde_json::Value {
        let record = &self.record;
        let versions: Vec<serde_json::Value> = record
            .versions
            .iter()
            .zip(&self.deployments)
            .enumerate()
            .map(|(index, (version, deployment))| {
                let mut status = deployment.status();
                let fields = status.as_object_mut().expect("an object");
                fields.insert("name".into(), version.name.clone().into());
                // What the version takes: the default's is the rest, whatever it was given.
                fields.insert(
                    "traffic_percentile".into(),
                    record.traffic_share(index).into(),
                );
                fields.insert("is_default".into(), version.is_default.into());
                fields.insert(
                    "is_control_version".into(),
                    version.is_control_version.into(),
                );
                fields.insert("description".into(), version.description.clone().into());
                fields.insert("tags".into(), serde_json::json!(version.tags));
                fields.insert(
                    "deployment".into(),
                    serde_json::to_value(&version.deployment).expect("serialises"),
                );
                status
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "kind": record.kind,
            "scoring_uri": format!("/api/v1/{}/{}/score", record.kind.singular(), self.name),
            "auth": record.auth,
            "description": record.description,
            "tags": record.tags,
            "versions": versions,
        })
    }
}

pub type RoutingTable = BTreeMap<String, Arc<LiveWebservice>>;

pub struct Control {
    /// Held across a whole commit, so changes apply one at a time.
    catalog: tokio::sync::Mutex<Catalog>,
    table: parking_lot::RwLock<Arc<RoutingTable>>,
    state_file: StateFile,
    settings: DeploymentSettings,
    pub tokens: Tokens,
    admin_key: String,
    /// The runtime that owns every deployment's tasks (the router's main one), whichever
    /// worker thread a change arrives on.
    runtime: tokio::runtime::Handle,
}

/// A new webservice as the management API or the router's configuration asks for it.
pub struct NewWebservice {
    pub kind: Kind,
    /// `None`: from the first deployment's deploymentconfig.json (`tokenAuthEnabled`,
    /// `authEnabled`), else key auth.
    pub auth: Option<AuthMode>,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub versions: Vec<Version>,
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::Invalid(m) => {
                ApiError::Scoring(modelpod_scoring::ScoringError::BadRequest(m))
            }
            CatalogError::Conflict(m) => ApiError::Conflict(m),
            CatalogError::NotFound(m) => ApiError::NotFound(m),
        }
    }
}

impl Control {
    /// Loads the state file (or starts an empty catalog), checks it, and starts every
    /// deployment it names. `admin_key` replaces the stored one when given.
    pub async fn open(
        state_file: StateFile,
        admin_key: Option<String>,
        token_lifetime: Duration,
        settings: DeploymentSettings,
        declared: Vec<(String, NewWebservice)>,
    ) -> anyhow::Result<Arc<Control>> {
        let stored = tokio::task::spawn_blocking({
            let file = state_file.clone();
            move || file.load::<Catalog>()
        })
        .await??;
        let fresh = stored.is_none();
        let mut catalog = match stored {
            Some(catalog) => {
                catalog.check().map_err(|e| {
                    anyhow::anyhow!("state file {}: {e}", state_file.path().display())
                })?;
                tracing::info!(
                    state_file = %state_file.path().display(),
                    webservices = catalog.webservices.len(),
                    "router state restored"
                );
                catalog
            }
            None => Catalog::new(random_key(), random_key()),
        };
        match admin_key {
            Some(key) if !key.trim().is_empty() => catalog.admin_key = key,
            _ if fresh => tracing::warn!(
                state_file = %state_file.path().display(),
                "no --admin-key given: a generated admin key is in the state file's admin_key field"
            ),
            _ => {}
        }
        for (name, new) in declared {
            catalog = declare(&catalog, &name, new)
                .map_err(|e| anyhow::anyhow!("service {name}: {e}"))?;
        }
        let control = Control {
            runtime: tokio::runtime::Handle::current(),
            tokens: Tokens::new(&catalog.token_secret, token_lifetime),
            admin_key: catalog.admin_key.clone(),
            catalog: tokio::sync::Mutex::new(Catalog::new(String::new(), String::new())),
            table: Default::default(),
            state_file,
            settings,
        };
        {
            let mut current = control.catalog.lock().await;
            control.commit(&mut current, catalog).await?;
        }
        Ok(Arc::new(control))
    }

    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The routing table now; cheap, and never blocks on a change in progress.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.read().clone()
    }

    pub async fn catalog(&self) -> Catalog {
        self.catalog.lock().await.clone()
    }

    /// Applies `change` to the catalog and commits the result; the change sees the catalog as
    /// it is once earlier changes are done.
    pub async fn change(
        self: &Arc<Self>,
        change: impl FnOnce(&Catalog) -> Result<Catalog, ApiError> + Send + 'static,
    ) -> Result<Catalog, ApiError> {
        let control = self.clone();
        self.runtime
            .spawn(async move {
                let mut current = control.catalog.lock().await;
                let next = change(&current)?;
                control
                    .commit(&mut current, next.clone())
                    .await
                    .map_err(|e| ApiError::Internal(format!("{e:#}")))?;
                Ok(next)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    /// Adds a webservice, its keys generated (or taken from its deploymentconfig.json).
    pub fn create(catalog: &Catalog, name: &str, new: NewWebservice) -> Result<Catalog, ApiError> {
        let config = match new
            .versions
            .first()
            .and_then(|v| v.deployment.deployment_config.as_ref())
        {
            Some(path) => DeploymentConfig::read(path).map_err(|e| {
                ApiError::Scoring(modelpod_scoring::ScoringError::BadRequest(e.to_string()))
            })?,
            None => DeploymentConfig::default(),
        };
        let auth = new
            .auth
            .unwrap_or(if config.token_auth_enabled == Some(true) {
                AuthMode::Token
            } else if config.auth_enabled == Some(false) {
                AuthMode::None
            } else {
                AuthMode::Key
            });
        let keys = config.key_list();
        let webservice = Webservice {
            kind: new.kind,
            auth,
            primary_key: keys.first().cloned().unwrap_or_else(random_key),
            secondary_key: keys.get(1).cloned().unwrap_or_else(random_key),
            token_generation: random_key(),
            description: new.description,
            tags: new.tags,
            versions: new.versions,
        };
        Ok(catalog.create(name, webservice)?)
    }

    async fn commit(&self, current: &mut Catalog, next: Catalog) -> anyhow::Result<()> {
        next.check()?;
        let old_table = self.table();
        let existing = |id: &DeploymentId| -> Option<Arc<Deployment>> {
            let live = old_table.get(&id.webservice)?;
            if live.record.kind != id.kind {
                return None;
            }
            let index = live
                .record
                .versions
                .iter()
                .position(|v| v.name == id.version)?;
            (live.record.versions[index].deployment
                == *deployment_spec(&next, &id.webservice, &id.version)?)
            .then(|| live.deployments[index].clone())
        };
        let mut started: Vec<Arc<Deployment>> = Vec::new();
        let mut table = RoutingTable::new();
        for (name, record) in &next.webservices {
            let mut deployments = Vec::new();
            for version in &record.versions {
                let id = DeploymentId {
                    webservice: name.clone(),
                    kind: record.kind,
                    version: version.name.clone(),
                };
                let deployment = match existing(&id) {
                    Some(deployment) => deployment,
                    None => {
                        match Deployment::start(id.clone(), &version.deployment, &self.settings)
                            .await
                        {
                            Ok(deployment) => {
                                started.push(deployment.clone());
                                deployment
                            }
                            Err(e) => {
                                stop_all(&started).await;
                                anyhow::bail!("{id}: {e}");
                            }
                        }
                    }
                };
                deployments.push(deployment);
            }
            let recent = old_table
                .get(name)
                .map(|live| live.recent.clone())
                .unwrap_or_default();
            table.insert(
                name.clone(),
                Arc::new(LiveWebservice {
                    name: name.clone(),
                    record: record.clone(),
                    deployments,
                    recent,
                }),
            );
        }
        let saved = tokio::task::spawn_blocking({
            let (file, next) = (self.state_file.clone(), next.clone());
            move || file.save(&next)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|saved| saved.map_err(anyhow::Error::from));
        if let Err(e) = saved {
            stop_all(&started).await;
            return Err(e);
        }
        *self.table.write() = Arc::new(table);
        *current = next;
        let kept = self.table();
        let dropped: Vec<Arc<Deployment>> = old_table
            .values()
            .flat_map(|live| live.deployments.iter())
            .filter(|d| {
                !kept
                    .values()
                    .any(|live| live.deployments.iter().any(|k| Arc::ptr_eq(k, d)))
            })
            .cloned()
            .collect();
        stop_all(&dropped).await;
        Ok(())
    }

    /// Stops every deployment (the router is shutting down).
    pub async fn shutdown(&self) {
        let table = self.table();
        let all: Vec<Arc<Deployment>> = table
            .values()
            .flat_map(|live| live.deployments.iter().cloned())
            .collect();
        stop_all(&all).await;
    }
}

/// A webservice from the router's configuration: created if new; if it exists, its
/// deployment follows the configuration and its keys stay, as does its auth mode unless the
/// configuration names one.
fn declare(catalog: &Catalog, name: &str, new: NewWebservice) -> Result<Catalog, ApiError> {
    let Some(existing) = catalog.webservices.get(name) else {
        return Control::create(catalog, name, new);
    };
    if existing.kind != new.kind {
        return Err(ApiError::Conflict(format!(
            "the state file has a {} named '{name}'",
            existing.kind.singular()
        )));
    }
    let mut next = catalog.clone();
    let webservice = next.webservices.get_mut(name).expect("just found");
    if let Some(auth) = new.auth
        && auth != webservice.auth
    {
        webservice.auth = auth;
        webservice.token_generation = random_key();
    }
    if let (Some(version), Some(declared)) = (webservice.versions.first_mut(), new.versions.first())
    {
        version.deployment = declared.deployment.clone();
    }
    next.check()?;
    Ok(next)
}

fn deployment_spec<'a>(
    catalog: &'a Catalog,
    webservice: &str,
    version: &str,
) -> Option<&'a DeploymentSpec> {
    Some(
        &catalog
            .webservices
            .get(webservice)?
            .version(version)?
            .deployment,
    )
}

async fn stop_all(deployments: &[Arc<Deployment>]) {
    futures_util::future::join_all(deployments.iter().map(|d| d.stop())).await;
}
