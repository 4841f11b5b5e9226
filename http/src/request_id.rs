//! Request ids: the caller's are echoed, and every answer carries an `x-ms-request-id`.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

/// The request-id headers Azure's clients send, echoed as they came.
pub const REQUEST_ID_HEADERS: [&str; 3] =
    ["x-request-id", "x-ms-request-id", "x-ms-client-request-id"];

/// Echoes the caller's request ids and always returns an `x-ms-request-id`.
pub async fn request_ids(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let echoed: Vec<(HeaderName, HeaderValue)> = REQUEST_ID_HEADERS
        .iter()
        .filter_map(|name| {
            let value = request.headers().get(*name)?.clone();
            Some((HeaderName::from_static(name), value))
        })
        .collect();
    let mut response = next.call(request).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    for (name, value) in echoed {
        headers.insert(name, value);
    }
    if !headers.contains_key("x-ms-request-id") {
        let id = uuid::Uuid::new_v4().to_string();
        headers.insert(
            HeaderName::from_static("x-ms-request-id"),
            HeaderValue::from_str(&id).expect("uuid is ASCII"),
        );
    }
    Ok(response)
}
