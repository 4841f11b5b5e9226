//! The management API under `/modelpod/`, behind the admin key: services and endpoints, an
//! endpoint's versions, keys, tokens and recent request logs. `modelpod service ...` and
//! `modelpod endpoint ...` are its command-line client.
//!
//! | route | does |
//! |---|---|
//! | `GET /modelpod/{services,endpoints}` | list, with each version's replicas |
//! | `GET/PUT/PATCH/DELETE /modelpod/{kind}/{name}` | show, create, update (auth, description, tags), delete |
//! | `GET /modelpod/{kind}/{name}/keys` | the primary and secondary keys |
//! | `POST /modelpod/{kind}/{name}/keys/regenerate` | `{"key": "Primary"}` or `"Secondary"`: a new one |
//! | `POST /modelpod/{kind}/{name}/token` | a signed token, its expiry and `refresh_by` |
//! | `GET /modelpod/{kind}/{name}/logs?limit=N` | the most recent requests |
//! | `POST /modelpod/endpoints/{name}/versions` | add a version |
//! | `PATCH/DELETE /modelpod/endpoints/{name}/versions/{version}` | update or delete one |

use super::RequestLog;
use super::access::authorize_admin;
use super::catalog::{
    AuthMode, Catalog, DeploymentSpec, KeyName, Kind, Version, VersionUpdate, WebserviceUpdate,
};
use super::control::{Control, NewWebservice};
use super::proxy::RouterState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use modelpod_http::ApiError;
use modelpod_http::auth::random_key;
use modelpod_scoring::ScoringError;
use std::collections::BTreeMap;

pub fn configure(cfg: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default().error_handler(|e, _| {
        ApiError::from(ScoringError::BadRequest(format!("request body: {e}"))).into()
    });
    cfg.service(
        web::scope("/modelpod")
            .wrap(from_fn(require_admin))
            .app_data(json)
            .app_data(modelpod_http::error::query_config())
            .route("/{kind}", web::get().to(list))
            .route("/{kind}/{name}", web::get().to(show))
            .route("/{kind}/{name}", web::put().to(create))
            .route("/{kind}/{name}", web::patch().to(update))
            .route("/{kind}/{name}", web::delete().to(delete))
            .route("/{kind}/{name}/keys", web::get().to(keys))
            .route(
                "/{kind}/{name}/keys/regenerate",
                web::post().to(regenerate_key),
            )
            .route("/{kind}/{name}/token", web::post().to(token))
            .route("/{kind}/{name}/logs", web::get().to(logs))
            .route("/endpoints/{name}/versions", web::post().to(create_version))
            .route(
                "/endpoints/{name}/versions/{version}",
                web::patch().to(update_version),
            )
            .route(
                "/endpoints/{name}/versions/{version}",
                web::delete().to(delete_version),
            )
            .default_service(web::to(modelpod_http::health::not_found)),
    );
}

/// Every management route takes the admin key, and says nothing else to a caller without it.
async fn require_admin(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request
        .app_data::<web::Data<RouterState>>()
        .expect("the router's state is registered");
    authorize_admin(request.request(), state.control.admin_key())?;
    next.call(request).await
}

fn kind(request: &HttpRequest) -> Result<Kind, ApiError> {
    match request.match_info().get("kind") {
        Some("services") => Ok(Kind::Service),
        Some("endpoints") => Ok(Kind::Endpoint),
        other => Err(ApiError::NotFound(format!(
            "no management route /modelpod/{}",
            other.unwrap_or_default()
        ))),
    }
}

fn name(request: &HttpRequest) -> String {
    request
        .match_info()
        .get("name")
        .unwrap_or_default()
        .to_string()
}

/// The webservice's status now, or 404.
fn status(control: &Control, kind: Kind, name: &str) -> Result<serde_json::Value, ApiError> {
    control
        .table()
        .get(name)
        .filter(|l| l.record.kind == kind)
        .map(|l| l.status())
        .ok_or_else(|| ApiError::NotFound(format!("{} '{name}' not found", kind.singular())))
}

async fn list(
    request: HttpRequest,
    state: web::Data<RouterState>,
) -> Result<HttpResponse, ApiError> {
    let kind = kind(&request)?;
    let all: Vec<serde_json::Value> = state
        .control
        .table()
        .values()
        .filter(|l| l.record.kind == kind)
        .map(|l| l.status())
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ kind.plural(): all })))
}

async fn show(
    request: HttpRequest,
    state: web::Data<RouterState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(status(&state.control, kind(&request)?, &name(&request))?))
}

/// `PUT /modelpod/services/{name}`.
// Unknown fields are refused by the flattened DeploymentSpec (serde cannot deny them here).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceCreate {
    #[serde(flatten)]
    pub deployment: DeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// `POST /modelpod/endpoints/{name}/versions`, and each of `versions` when an endpoint is
/// created.
// Unknown fields are refused by the flattened DeploymentSpec (serde cannot deny them here).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VersionCreate {
    pub name: String,
    #[serde(flatten)]
    pub deployment: DeploymentSpec,
    #[serde(default)]
    pub traffic_percentile: f64,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub is_control_version: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl From<VersionCreate> for Version {
    fn from(v: VersionCreate) -> Version {
        Version {
            name: v.name,
            deployment: v.deployment,
            traffic_percentile: v.traffic_percentile,
            is_default: v.is_default,
            is_control_version: v.is_control_version,
            description: v.description,
            tags: v.tags,
        }
    }
}

/// `PUT /modelpod/endpoints/{name}`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointCreate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub versions: Vec<VersionCreate>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(body.clone())
        .map_err(|e| ScoringError::BadRequest(format!("request body: {e}")).into())
}

const DEPLOYMENT_FIELDS: [&str; 5] = [
    "model_repository",
    "deployment_config",
    "serve_args",
    "kubernetes",
    "data_collection",
];

/// serde does not refuse unknown fields through `flatten`, so bodies with a flattened
/// deployment are checked here: a misspelt field is an error, not a silent default.
fn refuse_unknown(body: &serde_json::Value, own: &[&str]) -> Result<(), ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ScoringError::BadRequest("request body: expected a JSON object".into()).into());
    };
    match fields
        .keys()
        .find(|k| !own.contains(&k.as_str()) && !DEPLOYMENT_FIELDS.contains(&k.as_str()))
    {
        Some(unknown) => Err(ScoringError::BadRequest(format!(
            "request body: unknown field `{unknown}`, expected one of {}",
            own.iter()
                .chain(&DEPLOYMENT_FIELDS)
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
        None => Ok(()),
    }
}

impl ServiceCreate {
    pub fn from_json(body: &serde_json::Value) -> Result<ServiceCreate, ApiError> {
        refuse_unknown(body, &["auth", "description", "tags"])?;
        parse(body)
    }
}

impl VersionCreate {
    pub fn from_json(body: &serde_json::Value) -> Result<VersionCreate, ApiError> {
        refuse_unknown(
            body,
            &[
                "name",
                "traffic_percentile",
                "is_default",
                "is_control_version",
                "description",
                "tags",
            ],
        )?;
        parse(body)
    }
}

impl EndpointCreate {
    pub fn from_json(body: &serde_json::Value) -> Result<EndpointCreate, ApiError> {
        let mut endpoint: EndpointCreate = parse(body)?;
        endpoint.versions = body["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(VersionCreate::from_json)
            .collect::<Result<_, _>>()?;
        Ok(endpoint)
    }
}

async fn create(
    request: HttpRequest,
    state: web::Data<RouterState>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let (kind, name) = (kind(&request)?, name(&request));
    let new = match kind {
        Kind::Service => {
            let body = ServiceCreate::from_json(&body)?;
            NewWebservice {
                kind,
                auth: body.auth,
                description: body.description,
                tags: body.tags,
                versions: vec![Version {
                    name: super::catalog::SERVICE_VERSION.into(),
                    deployment: body.deployment,
                    traffic_percentile: 100.0,
                    is_default: true,
                    is_control_version: false,
                    description: String::new(),
                    tags: BTreeMap::new(),
                }],
            }
        }
        Kind::Endpoint => {
            let body = EndpointCreate::from_json(&body)?;
            NewWebservice {
                kind,
                auth: body.auth,
                description: body.description,
                tags: body.tags,
                versions: body.versions.into_iter().map(Version::from).collect(),
            }
        }
    };
    let created = name.clone();
    state
        .control
        .change(move |catalog| Control::create(catalog, &created, new))
        .await?;
    Ok(HttpResponse::Created().json(status(&state.control, kind, &name)?))
}

async fn update(
    request: HttpRequest,
    state: web::Data<RouterState>,
    body: web::Json<WebserviceUpdate>,
) -> Result<HttpResponse, ApiError> {
    let (kind, name) = (kind(&request)?, name(&request));
    let target = name.clone();
    let update = body.into_inner();
    state
        .control
        .change(move |catalog| Ok(catalog.update(kind, &target, &update)?))
        .await?;
    Ok(HttpResponse::Ok().json(status(&state.control, kind, &name)?))
}

async fn delete(
    request: HttpRequest,
    state: web::Data<RouterState>,
) -> Result<HttpResponse, ApiError> {
    let (kind, name) = (kind(&request)?, name(&request));
    let target = name.clone();
    state
        .control
        .change(move |catalog| Ok(catalog.delete(kind, &target)?))
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "deleted": name, "kind": kind })))
}

fn keys_of(catalog: &Catalog, kind: Kind, name: &str) -> Result<serde_json::Value, ApiError> {
    let webservice = catalog.get(kind, name)?;
    Ok(serde_json::json!({
        "primaryKey": webservice.primary_key,
        "secondaryKey": webservice.secondary_key,
    }))
}

async fn keys(
    request: HttpRequest,
    state: web::Data<RouterState>,
) -> Result<HttpResponse, ApiError> {
    let (kind, name) = (kind(&request)?, name(&request));
    let catalog = state.control.catalog().await;
    Ok(HttpResponse::Ok().json(keys_of(&catalog, kind, &name)?))
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegenerateKey {
    /// `Primary` or `Secondary`, as Azure's `regen_key(key=...)`.
    pub key: KeyName,
}

async fn regenerate_key(
    request: HttpRequest,
    state: web::Data<RouterState>,
    body: web::Json<RegenerateKey>,
) -> Result<HttpResponse, ApiError> {
    let (kind, name) = (kind(&request)?, name(&request));
    let (target, which) = (name.clone(), body.key);
    let catalog = state
        .control
        .change(move |catalog| Ok(catalog.set_key(kind, &target, which, random_key())?))
        .await?;
    Ok(HttpResponse::Ok().json(keys_of(&catalog, kind, &name)?))
}

async fn token(
    request: HttpRequest,
    state: web::Data<RouterState>,
) -> Result<HttpResponse, ApiError> {
    let (kind, name) = (kind(&request)?, name(&request));
    let catalog = state.control.catalog().await;
    let webservice = catalog.get(kind, &name)?;
    if webservice.auth != AuthMode::Token {
        return Err(ScoringError::BadRequest(format!(
            "token authentication is not enabled for {} {name}; enable it first (auth = token)",
            kind.singular()
        ))
        .into());
    }
    Ok(HttpResponse::Ok().json(state.control.tokens.issue(&name, webservice)))
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    limit: Option<usize>,
}

/// A webservice's most recent requests, newest last (Azure's `get_logs`, for the router's
/// part).
async fn logs(
    request: HttpRequest,
    state: web::Data<RouterState>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (kind, name) = (kind(&request)?, name(&request));
    let table = state.control.table();
    let live = table
        .get(&name)
        .filter(|l| l.record.kind == kind)
        .ok_or_else(|| ApiError::NotFound(format!("{} '{name}' not found", kind.singular())))?;
    let recent = live.recent.lock();
    let limit = query.limit.unwrap_or(100).min(recent.len());
    let entries: Vec<&RequestLog> = recent.iter().skip(recent.len() - limit).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "service": name, "requests": entries })))
}

async fn create_version(
    request: HttpRequest,
    state: web::Data<RouterState>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&request);
    let (target, version) = (
        name.clone(),
        Version::from(VersionCreate::from_json(&body)?),
    );
    state
        .control
        .change(move |catalog| Ok(catalog.create_version(&target, version)?))
        .await?;
    Ok(HttpResponse::Created().json(status(&state.control, Kind::Endpoint, &name)?))
}

async fn update_version(
    request: HttpRequest,
    state: web::Data<RouterState>,
    body: web::Json<VersionUpdate>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&request);
    let version = request
        .match_info()
        .get("version")
        .unwrap_or_default()
        .to_string();
    let (target, update) = (name.clone(), body.into_inner());
    state
        .control
        .change(move |catalog| Ok(catalog.update_version(&target, &version, &update)?))
        .await?;
    Ok(HttpResponse::Ok().json(status(&state.control, Kind::Endpoint, &name)?))
}

async fn delete_version(
    request: HttpRequest,
    state: web::Data<RouterState>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&request);
    let version = request
        .match_info()
        .get("version")
        .unwrap_or_default()
        .to_string();
    let target = name.clone();
    state
        .control
        .change(move |catalog| Ok(catalog.delete_version(&target, &version)?))
        .await?;
    Ok(HttpResponse::Ok().json(status(&state.control, Kind::Endpoint, &name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_refuse_unknown_fields() {
        use serde_json::json;
        let service =
            ServiceCreate::from_json(&json!({"model_repository": "m", "auth": "token"})).unwrap();
        assert_eq!(service.auth, Some(AuthMode::Token));
        assert_eq!(service.deployment.model_repository, Some("m".into()));
        let error = ServiceCreate::from_json(&json!({"model_repo": "m"})).unwrap_err();
        assert!(error.to_string().contains("`model_repo`"), "{error}");
        assert!(VersionCreate::from_json(&json!({"name": "v", "traffic_percent": 5})).is_err());
        assert!(
            EndpointCreate::from_json(&json!({"versions": [{"name": "v", "modl": 1}]})).is_err()
        );
        let version = VersionCreate::from_json(
            &json!({"name": "v", "model_repository": "m", "traffic_percentile": 20}),
        )
        .unwrap();
        assert_eq!(version.traffic_percentile, 20.0);
        assert!(ServiceCreate::from_json(&json!([1])).is_err());
    }
}
