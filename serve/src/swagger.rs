//! `GET /swagger.json`: a Swagger 2.0 document for the Azure scoring route, generated from the
//! served models' signatures and pipelines, as Azure's inference server generates one.

use super::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

/// A JSON schema for a value shaped like `example` (nested arrays of numbers).
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
        _ => json!({}),
    }
}

pub async fn swagger(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let host = request.connection_info().host().to_string();
    let mut definitions = Map::new();
    let mut model_names = Vec::new();
    for name in state.registry().model_names() {
        let Ok(model) = state.registry().get(&name, None) else {
            continue;
        };
        let example = model.pipeline.example_request();
        definitions.insert(
            format!("{name}Input"),
            json!({
                "type": "object",
                "required": ["data"],
                "properties": { "data": schema_of(&example["data"]) },
                "example": example,
            }),
        );
        model_names.push(name);
    }
    let default_input = match (state.config.default_model.as_ref(), model_names.as_slice()) {
        (Some(name), _) if definitions.contains_key(&format!("{name}Input")) => {
            format!("#/definitions/{name}Input")
        }
        (_, [only]) => format!("#/definitions/{only}Input"),
        _ => "#/definitions/ServiceInput".to_string(),
    };
    definitions.insert(
        "ServiceInput".into(),
        json!({ "type": "object", "required": ["data"], "properties": { "data": {} } }),
    );
    definitions.insert(
        "ErrorResponse".into(),
        json!({ "type": "object", "properties": {
            "message": { "type": "string" }, "error_type": { "type": "string" }, "error": { "type": "string" } } }),
    );
    let mut parameters = vec![
        json!({ "name": "serviceInputPayload", "in": "body", "required": true, "description": "The input payload for executing the real-time machine learning service.", "schema": { "$ref": default_input } }),
        json!({ "name": "model", "in": "query", "required": model_names.len() > 1 && state.config.default_model.is_none(), "type": "string", "enum": model_names }),
        json!({ "name": "version", "in": "query", "required": false, "type": "integer" }),
    ];
    let mut document = json!({
        "swagger": "2.0",
        "info": {
            "title": "modelpod scoring service",
            "description": "Scores the served models. Send {\"data\": ...} as the models' definitions below describe.",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "host": host,
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {
            "/": { "get": {
                "operationId": "ServiceHealthCheck",
                "description": "Simple health check endpoint to ensure the service is up at any given point.",
                "responses": { "200": { "description": "If service is up and running, this response will be returned with the content 'Healthy'", "schema": { "type": "string" } } },
            } },
            "/score": { "post": {
                "operationId": "RunMLService",
                "description": "Run web service's model and get the prediction output",
                "responses": {
                    "200": { "description": "Success", "schema": { "type": "object" } },
                    "default": { "description": "Failure", "schema": { "$ref": "#/definitions/ErrorResponse" } },
                },
            } },
        },
        "definitions": definitions,
    });
    if state.auth.enabled() {
        document["securityDefinitions"] = json!({ "Bearer": { "type": "apiKey", "name": "Authorization", "in": "header",
            "description": "For example: Bearer abc123" } });
        document["paths"]["/score"]["post"]["security"] = json!([{ "Bearer": [] }]);
    }
    document["paths"]["/score"]["post"]["parameters"] =
        Value::Array(std::mem::take(&mut parameters));
    HttpResponse::Ok().json(document)
}
