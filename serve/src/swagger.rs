//! `GET /swagger.json[?version=2|3]`: the Azure scoring route described as Azure's inference
//! server describes it (Swagger 2.0 by default, OpenAPI 3.0 with `?version=3`), generated from
//! the served models' pipelines: `ServiceInput` and `ServiceOutput` schemas with a small
//! example, the Bearer scheme on `/score`, an `ErrorResponse`. With several models, each has
//! its `<model>Input` and `<model>Output` too, and OpenAPI 3 offers them as `oneOf`.
//!
//! The document names no host: a client generator then uses the address it was fetched from,
//! and the router rewrites the base path and host to its own.

use super::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use modelpod_http::ApiError;
use serde_json::{Map, Value, json};

/// Examples larger than this many values are left out: a 3×224×224 image's zeros would make a
/// document of most of a megabyte that tools choke on, and the schema already says the shape.
const EXAMPLE_VALUES_LIMIT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Swagger2,
    OpenApi3,
}

impl Version {
    fn parse(text: Option<&str>) -> Result<Version, ApiError> {
        match text {
            None | Some("2") | Some("2.0") => Ok(Version::Swagger2),
            Some("3") | Some("3.0") => Ok(Version::OpenApi3),
            Some(other) => Err(ApiError::NotFound(format!(
                "Swagger version [{other}] is not valid. Supported versions: [2, 3]."
            ))),
        }
    }

    /// Where a schema named `name` is referenced from.
    fn reference(self, name: &str) -> Value {
        match self {
            Version::Swagger2 => json!({ "$ref": format!("#/definitions/{name}") }),
            Version::OpenApi3 => json!({ "$ref": format!("#/components/schemas/{name}") }),
        }
    }
}

/// A JSON schema for values shaped like `example`: nested arrays, objects, numbers, strings.
fn schema_of(example: &Value) -> Value {
    match example {
        Value::Array(items) => {
            let mut schema =
                json!({ "type": "array", "items": items.first().map_or(json!({}), schema_of) });
            if !items.is_empty() {
                schema["minItems"] = json!(1);
            }
            schema
        }
        Value::Object(fields) => json!({
            "type": "object",
            "required": fields.keys().collect::<Vec<_>>(),
            "properties": fields.iter().map(|(k, v)| (k.clone(), schema_of(v))).collect::<Map<_, _>>(),
        }),
        Value::Bool(_) => json!({ "type": "boolean" }),
        Value::Number(n) if n.is_f64() => json!({ "type": "number", "format": "double" }),
        Value::Number(_) => json!({ "type": "integer", "format": "int64" }),
        Value::String(_) => json!({ "type": "string" }),
        Value::Null => json!({}),
    }
}

/// How many scalars `value` holds.
fn values_in(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(values_in).sum(),
        Value::Object(fields) => fields.values().map(values_in).sum(),
        _ => 1,
    }
}

/// The schema of `example`, with the example itself when it is small.
fn with_example(example: &Value) -> Value {
    let mut schema = schema_of(example);
    if values_in(example) <= EXAMPLE_VALUES_LIMIT {
        schema["example"] = example.clone();
    }
    schema
}

/// One model's request and reply schemas.
struct ModelSchemas {
    name: String,
    input: Value,
    output: Value,
}

fn model_schemas(state: &AppState) -> Vec<ModelSchemas> {
    state
        .registry()
        .model_names()
        .into_iter()
        .filter_map(|name| {
            let model = state.registry().get(&name, None).ok()?;
            Some(ModelSchemas {
                input: with_example(&model.pipeline.example_request()),
                output: with_example(&model.pipeline.example_reply()),
                name,
            })
        })
        .collect()
}

/// The schemas by name: `ServiceInput`/`ServiceOutput` (the model `/score` takes without
/// `?model=`, else any `{"data": ...}`), each model's own, and `ErrorResponse`.
fn schemas(version: Version, models: &[ModelSchemas], default: Option<&str>) -> Map<String, Value> {
    let mut schemas = Map::new();
    let chosen = match (default, models) {
        (Some(name), _) => models.iter().find(|m| m.name == name),
        (None, [only]) => Some(only),
        _ => None,
    };
    let (input, output) = match chosen {
        Some(model) => (model.input.clone(), model.output.clone()),
        None if version == Version::OpenApi3 && !models.is_empty() => {
            let one_of = |suffix: &str| {
                json!({ "oneOf": models.iter()
                    .map(|m| version.reference(&format!("{}{suffix}", m.name)))
                    .collect::<Vec<_>>() })
            };
            (one_of("Input"), one_of("Output"))
        }
        None => (
            json!({
                "type": "object",
                "required": ["data"],
                "properties": { "data": {
                    "description": "The input of the model named by ?model=, as its <model>Input definition describes."
                } },
            }),
            json!({ "description": "The reply of the model named by ?model=, as its <model>Output definition describes." }),
        ),
    };
    schemas.insert("ServiceInput".into(), input);
    schemas.insert("ServiceOutput".into(), output);
    if models.len() > 1 {
        for model in models {
            schemas.insert(format!("{}Input", model.name), model.input.clone());
            schemas.insert(format!("{}Output", model.name), model.output.clone());
        }
    }
    schemas.insert(
        "ErrorResponse".into(),
        json!({ "type": "object", "properties": {
            "message": { "type": "string" },
            "error": { "type": "string" },
            "error_type": { "type": "string" },
        } }),
    );
    schemas
}

const BEARER_DESCRIPTION: &str = "For example: Bearer abc123";

fn document(version: Version, state: &AppState) -> Value {
    let models = model_schemas(state);
    let default = state.config.default_model.as_deref();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    let model_required = names.len() > 1 && default.is_none();
    let info = json!({
        "title": "modelpod scoring service",
        "description": "Scores the served models: POST {\"data\": ...} to /score, as on Azure Machine Learning.",
        "version": env!("CARGO_PKG_VERSION"),
    });
    let schemas = schemas(version, &models, default);
    let error = version.reference("ErrorResponse");
    let health_description =
        "Simple health check endpoint to ensure the service is up at any given point.";
    let healthy =
        "If service is up and running, this response will be returned with the content 'Healthy'";
    let score_description = "Run web service's model and get the prediction output";
    let input_description =
        "The input payload for executing the real-time machine learning service.";
    let success = "The service processed the input correctly and provided a result prediction, if applicable.";
    let failure = "The service failed to execute due to an error.";
    match version {
        Version::Swagger2 => json!({
            "swagger": "2.0",
            "info": info,
            "schemes": ["http", "https"],
            "consumes": ["application/json"],
            "produces": ["application/json"],
            "securityDefinitions": { "Bearer": {
                "type": "apiKey", "name": "Authorization", "in": "header",
                "description": BEARER_DESCRIPTION,
            } },
            "paths": {
                "/": { "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": health_description,
                    "produces": ["text/plain"],
                    "responses": {
                        "200": { "description": healthy, "schema": { "type": "string", "example": "Healthy" } },
                        "default": { "description": failure, "schema": error },
                    },
                } },
                "/score": { "post": {
                    "operationId": "RunMLService",
                    "description": score_description,
                    "security": [{ "Bearer": [] }],
                    "parameters": [
                        { "name": "serviceInputPayload", "in": "body", "required": true,
                          "description": input_description, "schema": version.reference("ServiceInput") },
                        { "name": "model", "in": "query", "required": model_required, "type": "string", "enum": names },
                        { "name": "version", "in": "query", "required": false, "type": "integer" },
                    ],
                    "responses": {
                        "200": { "description": success, "schema": version.reference("ServiceOutput") },
                        "default": { "description": failure, "schema": error },
                    },
                } },
            },
            "definitions": schemas,
        }),
        Version::OpenApi3 => json!({
            "openapi": "3.0.3",
            "info": info,
            "security": [{ "Bearer": [] }],
            "paths": {
                "/": { "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": health_description,
                    "security": [],
                    "responses": {
                        "200": { "description": healthy,
                                 "content": { "text/plain": { "schema": { "type": "string", "example": "Healthy" } } } },
                        "default": { "description": failure,
                                     "content": { "application/json": { "schema": error } } },
                    },
                } },
                "/score": { "post": {
                    "operationId": "RunMLService",
                    "description": score_description,
                    "security": [{ "Bearer": [] }],
                    "parameters": [
                        { "name": "model", "in": "query", "required": model_required,
                          "schema": { "type": "string", "enum": names } },
                        { "name": "version", "in": "query", "required": false, "schema": { "type": "integer" } },
                    ],
                    "requestBody": {
                        "description": input_description,
                        "required": true,
                        "content": { "application/json": { "schema": version.reference("ServiceInput") } },
                    },
                    "responses": {
                        "200": { "description": success,
                                 "content": { "application/json": { "schema": version.reference("ServiceOutput") } } },
                        "default": { "description": failure,
                                     "content": { "application/json": { "schema": error } } },
                    },
                } },
            },
            "components": {
                "schemas": schemas,
                "securitySchemes": { "Bearer": {
                    "type": "apiKey", "name": "Authorization", "in": "header",
                    "description": BEARER_DESCRIPTION,
                } },
            },
        }),
    }
}

#[derive(serde::Deserialize)]
pub struct SwaggerQuery {
    version: Option<String>,
}

pub async fn swagger(
    _request: HttpRequest,
    query: web::Query<SwaggerQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(service) = &state.entry_script {
        return Ok(crate::entry_script::http::swagger(
            service,
            query.version.as_deref(),
        ));
    }
    let version = Version::parse(query.version.as_deref())?;
    let state = state.into_inner();
    // Reading every model's pipeline may load a lazy one: off the event loop.
    let document = web::block(move || document(version, &state))
        .await
        .map_err(|e| ApiError::Internal(format!("swagger: {e}")))?;
    Ok(HttpResponse::Ok().json(document))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_azures() {
        assert_eq!(Version::parse(None).unwrap(), Version::Swagger2);
        assert_eq!(Version::parse(Some("2.0")).unwrap(), Version::Swagger2);
        assert_eq!(Version::parse(Some("3")).unwrap(), Version::OpenApi3);
        let refused = Version::parse(Some("4")).unwrap_err().to_string();
        assert!(refused.contains("[4] is not valid"), "{refused}");
    }

    #[test]
    fn a_large_example_is_left_out_and_the_schema_kept() {
        let image = json!({ "data": vec![vec![vec![0.0; 224]; 224]; 3] });
        let schema = with_example(&image);
        assert!(schema.get("example").is_none());
        assert_eq!(
            schema["properties"]["data"]["items"]["items"]["type"],
            "array"
        );
        let small = json!({ "data": [[0.0, 0.0]] });
        assert_eq!(with_example(&small)["example"], small);
    }

    #[test]
    fn replies_of_labels_are_strings() {
        assert_eq!(schema_of(&json!(["setosa"]))["items"]["type"], "string");
    }
}
