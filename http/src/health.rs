//! Answers both servers give the same way: Azure's liveness text and the JSON 404.

use crate::error::ApiError;
use actix_web::{HttpRequest, HttpResponse};

pub async fn not_found(request: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.path()
    )))
}

pub async fn azure_health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Healthy")
}
