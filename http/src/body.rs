//! Request bodies, read within a size limit, a time limit and a byte budget that all of a
//! server's connections share. Memory follows what arrives, never what a header declares: a
//! connection that only sends `Content-Length: 104857600` holds no buffer at all.

use crate::error::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use modelpod_scoring::ScoringError;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client may take to send its whole body by default before 408, as Azure's front
/// end answers a body that stalls.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes all connections together may hold in bodies being read, by default: several
/// maximum-size bodies at once, while thousands of stalled connections cannot add up to more.
pub const DEFAULT_BODY_BUDGET: usize = 1 << 30;

/// The first reservation for a body; it grows with what arrives, up to what was declared.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// One server's body reading: its time limit and the byte budget its connections share.
#[derive(Clone)]
pub struct BodyReader {
    timeout: Duration,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
}

/// A body that was read whole. Its bytes count against the server's budget until it is
/// dropped, so a server scoring many large bodies refuses more before it runs out of memory.
pub struct Body {
    bytes: Bytes,
    _reserved: Option<OwnedSemaphorePermit>,
}

impl Body {
    /// The bytes, without their budget reservation (for a copy kept past this request).
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

impl Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Default for BodyReader {
    fn default() -> BodyReader {
        BodyReader::new(DEFAULT_BODY_TIMEOUT, DEFAULT_BODY_BUDGET)
    }
}

impl BodyReader {
    pub fn new(timeout: Duration, budget_bytes: usize) -> BodyReader {
        let budget_bytes = budget_bytes.clamp(1, Semaphore::MAX_PERMITS);
        BodyReader {
            timeout,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
        }
    }

    /// Reads a body of at most `limit` bytes: 413 past the limit (before reading, when the
    /// header declares more), 408 when it has not all arrived within the timeout, 503 when the
    /// server's budget for bodies in flight is spent.
    pub async fn read(
        &self,
        request: &HttpRequest,
        payload: web::Payload,
        limit: usize,
    ) -> Result<Body, ApiError> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        // A compressed body is inflated as it arrives; the limit counts inflated bytes, so a
        // small body that inflates past it is refused as soon as it does.
        let encoding = request
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
        let payload: std::pin::Pin<Box<dyn futures_util::Stream<Item = _>>> =
            match encoding.as_deref() {
                None | Some("" | "identity") => Box::pin(payload),
                Some("gzip" | "x-gzip" | "deflate") => Box::pin(
                    actix_web::dev::Decompress::from_headers(payload, request.headers()),
                ),
                Some(other) => {
                    return Err(ScoringError::BadRequest(format!(
                    "Content-Encoding '{other}' is not supported: send gzip, deflate or identity"
                ))
                .into());
                }
            };
        match tokio::time::timeout(self.timeout, self.read_all(payload, limit, declared)).await {
            Ok(body) => body,
            Err(_) => Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    async fn read_all(
        &self,
        mut payload: std::pin::Pin<
            Box<
                dyn futures_util::Stream<
                        Item = Result<bytes::Bytes, actix_web::error::PayloadError>,
                    >,
            >,
        >,
        limit: usize,
        declared: Option<usize>,
    ) -> Result<Body, ApiError> {
        let mut body = BytesMut::new();
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ScoringError::BadRequest(format!("reading the request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            if chunk.is_empty() {
                continue;
            }
            let permit = u32::try_from(chunk.len())
                .ok()
                .and_then(|n| self.budget.clone().try_acquire_many_owned(n).ok())
                .ok_or_else(|| {
                    ScoringError::Overloaded(format!(
                        "the server is reading more than {} bytes of request bodies at once",
                        self.budget_bytes
                    ))
                })?;
            match &mut reserved {
                Some(held) => held.merge(permit),
                None => reserved = Some(permit),
            }
            if body.capacity() - body.len() < chunk.len() {
                // Double as data arrives, but never past what was declared.
                let wanted = (body.capacity() * 2).max(INITIAL_CAPACITY);
                let wanted = declared.map_or(wanted, |d| wanted.min(d));
                body.reserve(wanted.max(body.len() + chunk.len()) - body.len());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Body {
            bytes: body.freeze(),
            _reserved: reserved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    async fn stream(
        chunks: impl futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>>
        + 'static,
    ) -> web::Payload {
        use actix_web::FromRequest;
        let boxed: std::pin::Pin<
            Box<dyn futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>>>,
        > = Box::pin(chunks);
        let mut inner = actix_web::dev::Payload::Stream { payload: boxed };
        let request = TestRequest::default().to_http_request();
        web::Payload::from_request(&request, &mut inner)
            .await
            .unwrap()
    }

    async fn payload(chunks: Vec<&'static [u8]>) -> web::Payload {
        stream(futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
        ))
        .await
    }

    #[actix_web::test]
    async fn reads_within_the_limit_and_returns_the_budget() {
        let reader = BodyReader::new(Duration::from_secs(5), 64);
        let request = TestRequest::default().to_http_request();
        let body = reader
            .read(&request, payload(vec![b"hello"]).await, 1024)
            .await
            .unwrap();
        assert_eq!(&*body, b"hello");
        assert_eq!(reader.budget.available_permits(), 59);
        drop(body);
        assert_eq!(reader.budget.available_permits(), 64);
    }

    #[actix_web::test]
    async fn a_declared_length_reserves_nothing_and_over_the_limit_is_413() {
        let reader = BodyReader::default();
        let declared = TestRequest::default()
            .insert_header((header::CONTENT_LENGTH, "104857600"))
            .to_http_request();
        let error = reader
            .read(&declared, payload(vec![]).await, 1024)
            .await
            .err()
            .unwrap();
        assert!(matches!(error, ApiError::PayloadTooLarge { limit: 1024 }));
    }

    #[actix_web::test]
    async fn a_spent_budget_is_503() {
        let reader = BodyReader::new(Duration::from_secs(5), 4);
        let request = TestRequest::default().to_http_request();
        let error = reader
            .read(&request, payload(vec![b"too long"]).await, 1024)
            .await
            .err()
            .unwrap();
        assert_eq!(
            actix_web::ResponseError::status_code(&error).as_u16(),
            503,
            "{error}"
        );
    }

    #[actix_web::test]
    async fn a_body_that_never_ends_is_408() {
        let reader = BodyReader::new(Duration::from_millis(50), 1024);
        let request = TestRequest::default().to_http_request();
        let error = reader
            .read(
                &request,
                stream(futures_util::stream::pending()).await,
                1024,
            )
            .await
            .err()
            .unwrap();
        assert_eq!(actix_web::ResponseError::status_code(&error).as_u16(), 408);
    }
}
