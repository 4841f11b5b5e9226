//! `modelpod service ...` and `modelpod endpoint ...`: the command-line client of the router's
//! management API. Each command is one request; the answer is printed as JSON.
//!
//! It uses ureq rather than the workspace's reqwest: reqwest's rustls backend without aws-lc
//! needs a process-wide crypto provider installed before any reqwest client is built, in every
//! crate of the workspace (feature unification), while ureq takes ring directly.

use anyhow::Context;
use modelpod_router::admin::{EndpointCreate, RegenerateKey, ServiceCreate, VersionCreate};
use modelpod_router::catalog::DeploymentSpec;
use modelpod_router::catalog::{AuthMode, Catalog, KeyName, VersionUpdate, WebserviceUpdate};
use modelpod_router::{DEFAULT_STATE_FILE, DataCollection, collect};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to reach the router's management API.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The router's base URL.
    #[arg(
        long,
        env = "MODELPOD_ROUTER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub router: String,
    /// The router's admin key [default: read from --state-file].
    #[arg(
        long,
        env = "MODELPOD_ADMIN_KEY",
        hide_env_values = true,
        global = true
    )]
    pub admin_key: Option<String>,
    /// The router's state file, to read the admin key from when none is given.
    #[arg(long, env = "MODELPOD_ROUTER_STATE", global = true)]
    pub state_file: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file for an HTTPS router (a self-signed
    /// certificate, say) [default: the Web PKI roots].
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// Where a deployment's replicas come from.
#[derive(Debug, Clone, clap::Args)]
pub struct DeploymentArgs {
    /// The model repository its local replicas serve.
    #[arg(long)]
    pub model_repository: Option<PathBuf>,
    /// Azure deploymentconfig.json (limits, autoscaler; for a new service, auth and keys).
    #[arg(long)]
    pub deployment_config: Option<PathBuf>,
    /// Azure inferenceconfig.json: its local replicas serve the entry script (score.py).
    #[arg(long)]
    pub inference_config: Option<PathBuf>,
    /// More arguments for each replica's `modelpod serve` (repeat the flag).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Collect each scored request's inputs and outputs under this directory.
    #[arg(long)]
    pub data_collection: Option<PathBuf>,
    /// Collected records as CSV instead of JSON lines.
    #[arg(long, requires = "data_collection")]
    pub data_collection_csv: bool,
}

impl DeploymentArgs {
    /// Paths are made absolute here: the router resolves them from its own directory.
    fn spec(&self) -> anyhow::Result<DeploymentSpec> {
        Ok(DeploymentSpec {
            model_repository: self.model_repository.as_deref().map(absolute).transpose()?,
            deployment_config: self
                .deployment_config
                .as_deref()
                .map(absolute)
                .transpose()?,
            inference_config: self.inference_config.as_deref().map(absolute).transpose()?,
            serve_args: self.serve_args.clone(),
            kubernetes: None,
            data_collection: self
                .data_collection
                .as_deref()
                .map(|root| -> anyhow::Result<DataCollection> {
                    Ok(DataCollection {
                        root: absolute(root)?,
                        format: if self.data_collection_csv {
                            collect::Format::Csv
                        } else {
                            collect::Format::Jsonl
                        },
                    })
                })
                .transpose()?,
        })
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}", path.display()))
}

/// Description and tags of a webservice or version.
#[derive(Debug, Clone, clap::Args)]
pub struct Labels {
    #[arg(long)]
    pub description: Option<String>,
    /// A tag as KEY=VALUE (repeat the flag); replaces all tags.
    #[arg(long = "tag", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
}

impl Labels {
    fn tags(&self) -> Option<BTreeMap<String, String>> {
        (!self.tags.is_empty()).then(|| self.tags.iter().cloned().collect())
    }
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("a tag is KEY=VALUE, not '{text}'"))
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyArg {
    Primary,
    Secondary,
}

/// What services and endpoints share.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Common {
    /// List them, with each version's replicas.
    List,
    /// Show one.
    Show { name: String },
    /// Change its auth mode, description or tags.
    Update {
        name: String,
        /// key, token or none (key and token are never both on).
        #[arg(long, value_enum)]
        auth: Option<AuthMode>,
        #[command(flatten)]
        labels: Labels,
    },
    /// Delete it and stop its replicas.
    Delete { name: String },
    /// Print its primary and secondary keys.
    Keys { name: String },
    /// Replace one of its keys with a new random one; the other keeps working.
    RegenKey {
        name: String,
        /// `primary` or `secondary`; any case, so Azure's `Primary` works as written.
        #[arg(long, value_enum, ignore_case = true)]
        key: KeyArg,
    },
    /// Issue a token (token auth only), with its expiry and when to refresh it.
    Token { name: String },
    /// Its most recent requests.
    Logs {
        name: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServiceAction {
    /// Create a service (one deployment).
    Create {
        name: String,
        #[command(flatten)]
        deployment: DeploymentArgs,
        /// key, token or none [default: from deploymentconfig.json, else key].
        #[arg(long, value_enum)]
        auth: Option<AuthMode>,
        #[command(flatten)]
        labels: Labels,
    },
    #[command(flatten)]
    Common(Common),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum EndpointAction {
    /// Create an endpoint with no versions yet.
    Create {
        name: String,
        /// key, token or none [default: key].
        #[arg(long, value_enum)]
        auth: Option<AuthMode>,
        #[command(flatten)]
        labels: Labels,
    },
    /// Add a version (at most 6); the first is the default.
    VersionCreate {
        endpoint: String,
        version: String,
        #[command(flatten)]
        deployment: DeploymentArgs,
        /// Percentage of the endpoint's requests it takes.
        #[arg(long, default_value_t = 0.0)]
        traffic_percentile: f64,
        /// Make it the default version (it also takes the traffic no version claims).
        #[arg(long)]
        default: bool,
        /// Make it the control version (at most one); others are treatments.
        #[arg(long)]
        control: bool,
        #[command(flatten)]
        labels: Labels,
    },
    /// Change a version's percentile, role, description or tags.
    VersionUpdate {
        endpoint: String,
        version: String,
        #[arg(long)]
        traffic_percentile: Option<f64>,
        /// Make it the default version.
        #[arg(long)]
        default: bool,
        /// Make it the control version (true) or a treatment (false).
        #[arg(long)]
        control: Option<bool>,
        #[command(flatten)]
        labels: Labels,
    },
    /// Delete a version (the default only when it is the last).
    VersionDelete { endpoint: String, version: String },
    #[command(flatten)]
    Common(Common),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServiceCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EndpointCommand {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub action: EndpointAction,
}

/// One management request, ready to send.
struct Call {
    method: ureq::http::Method,
    path: String,
    body: Option<serde_json::Value>,
}

impl Call {
    fn get(path: String) -> Call {
        Call {
            method: ureq::http::Method::GET,
            path,
            body: None,
        }
    }

    fn with(method: ureq::http::Method, path: String, body: impl serde::Serialize) -> Call {
        Call {
            method,
            path,
            body: Some(serde_json::to_value(body).expect("request bodies serialise")),
        }
    }
}

fn common_call(plural: &str, action: &Common) -> Call {
    use ureq::http::Method;
    match action {
        Common::List => Call::get(format!("/modelpod/{plural}")),
        Common::Show { name } => Call::get(format!("/modelpod/{plural}/{name}")),
        Common::Update { name, auth, labels } => Call::with(
            Method::PATCH,
            format!("/modelpod/{plural}/{name}"),
            WebserviceUpdate {
                auth: *auth,
                description: labels.description.clone(),
                tags: labels.tags(),
                ..Default::default()
            },
        ),
        Common::Delete { name } => Call {
            method: Method::DELETE,
            path: format!("/modelpod/{plural}/{name}"),
            body: None,
        },
        Common::Keys { name } => Call::get(format!("/modelpod/{plural}/{name}/keys")),
        Common::RegenKey { name, key } => Call::with(
            Method::POST,
            format!("/modelpod/{plural}/{name}/keys/regenerate"),
            RegenerateKey {
                key: match key {
                    KeyArg::Primary => KeyName::Primary,
                    KeyArg::Secondary => KeyName::Secondary,
                },
            },
        ),
        Common::Token { name } => Call::with(
            Method::POST,
            format!("/modelpod/{plural}/{name}/token"),
            serde_json::json!({}),
        ),
        Common::Logs { name, limit } => {
            Call::get(format!("/modelpod/{plural}/{name}/logs?limit={limit}"))
        }
    }
}

pub fn run_service(command: ServiceCommand) -> anyhow::Result<()> {
    let call = match &command.action {
        ServiceAction::Create {
            name,
            deployment,
            auth,
            labels,
        } => Call::with(
            ureq::http::Method::PUT,
            format!("/modelpod/services/{name}"),
            ServiceCreate {
                deployment: deployment.spec()?,
                auth: *auth,
                description: labels.description.clone().unwrap_or_default(),
                tags: labels.tags().unwrap_or_default(),
            },
        ),
        ServiceAction::Common(action) => common_call("services", action),
    };
    send(&command.connection, call)
}

pub fn run_endpoint(command: EndpointCommand) -> anyhow::Result<()> {
    use ureq::http::Method;
    let call = match &command.action {
        EndpointAction::Create { name, auth, labels } => Call::with(
            Method::PUT,
            format!("/modelpod/endpoints/{name}"),
            EndpointCreate {
                auth: *auth,
                description: labels.description.clone().unwrap_or_default(),
                tags: labels.tags().unwrap_or_default(),
                versions: Vec::new(),
            },
        ),
        EndpointAction::VersionCreate {
            endpoint,
            version,
            deployment,
            traffic_percentile,
            default,
            control,
            labels,
        } => Call::with(
            Method::POST,
            format!("/modelpod/endpoints/{endpoint}/versions"),
            VersionCreate {
                name: version.clone(),
                deployment: deployment.spec()?,
                traffic_percentile: *traffic_percentile,
                is_default: *default,
                is_control_version: *control,
                description: labels.description.clone().unwrap_or_default(),
                tags: labels.tags().unwrap_or_default(),
            },
        ),
        EndpointAction::VersionUpdate {
            endpoint,
            version,
            traffic_percentile,
            default,
            control,
            labels,
        } => Call::with(
            Method::PATCH,
            format!("/modelpod/endpoints/{endpoint}/versions/{version}"),
            VersionUpdate {
                traffic_percentile: *traffic_percentile,
                is_default: default.then_some(true),
                is_control_version: *control,
                description: labels.description.clone(),
                tags: labels.tags(),
            },
        ),
        EndpointAction::VersionDelete { endpoint, version } => Call {
            method: Method::DELETE,
            path: format!("/modelpod/endpoints/{endpoint}/versions/{version}"),
            body: None,
        },
        EndpointAction::Common(action) => common_call("endpoints", action),
    };
    send(&command.connection, call)
}

fn admin_key(connection: &Connection) -> anyhow::Result<String> {
    if let Some(key) = &connection.admin_key {
        return Ok(key.clone());
    }
    let path = connection
        .state_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE));
    let catalog: Catalog = modelpod_router::store::StateFile::new(path.clone())
        .load()?
        .with_context(|| {
            format!(
                "no --admin-key (or MODELPOD_ADMIN_KEY) given, and no state file at {} to read it from",
                path.display()
            )
        })?;
    Ok(catalog.admin_key)
}

fn send(connection: &Connection, call: Call) -> anyhow::Result<()> {
    let key = admin_key(connection)?;
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(120)));
    if let Some(ca) = &connection.ca_cert {
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certificates(ca)?)))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let url = format!("{}{}", connection.router.trim_end_matches('/'), call.path);
    let body = match &call.body {
        Some(body) => serde_json::to_vec(body)?,
        None => Vec::new(),
    };
    let mut request = ureq::http::Request::builder()
        .method(call.method)
        .uri(&url)
        .header("Authorization", format!("Bearer {key}"));
    if call.body.is_some() {
        request = request.header("Content-Type", "application/json");
    }
    let response = agent
        .run(request.body(body)?)
        .with_context(|| format!("cannot reach the router at {}", connection.router))?;
    let status = response.status();
    let body: serde_json::Value = response
        .into_body()
        .read_json()
        .with_context(|| format!("the router's answer ({status}) is not JSON"))?;
    if status.is_success() {
        crate::cli_output::print_line(&serde_json::to_string_pretty(&body)?)?;
        Ok(())
    } else {
        anyhow::bail!(
            "{status}: {}",
            body["error"].as_str().unwrap_or(&body.to_string())
        )
    }
}

/// Every certificate in a PEM file.
fn certificates(path: &Path) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certificates: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(Ok(certificate)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}", path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{}: no certificate in the file",
        path.display()
    );
    Ok(certificates)
}
