//! TLS termination: rustls with TLS 1.2 and 1.3 only (1.1 and older are refused at the
//! handshake), certificates and key from PEM files, and an optional plain-HTTP listener that
//! only redirects to HTTPS.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A server configuration from a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(certificate: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect())
        .map_err(|e| TlsError::Certificate {
            path: certificate.display().to_string(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate {
            path: certificate.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    // The provider is named here rather than installed process-wide, so nothing depends on
    // which crypto crates the build happens to contain.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key do not match: {e}")))
}

/// Where a redirect-only listener sends its callers.
#[derive(Debug, Clone)]
pub struct RedirectTarget {
    pub https_port: u16,
    /// The name clients should use (`--public-host`); without it, the address the connection
    /// came in on. Never the request's Host header, which would make this an open redirect.
    pub public_host: Option<String>,
}

/// The plain-HTTP answer of a redirect-only listener: 308 to the same path over HTTPS.
pub async fn redirect_to_https(
    request: actix_web::HttpRequest,
    target: actix_web::web::Data<RedirectTarget>,
) -> actix_web::HttpResponse {
    let host = match &target.public_host {
        Some(host) => host.clone(),
        None => match request.app_config().local_addr().ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    // Only an absolute path: `//evil.example` after the authority would name another host.
    let path = if path.starts_with('/') && !path.starts_with("//") {
        path
    } else {
        "/".to_string()
    };
    actix_web::HttpResponse::PermanentRedirect()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("https://{host}:{}{path}", target.https_port),
        ))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn redirects_ignore_the_host_header() {
        let request = actix_web::test::TestRequest::get()
            .uri("/api/v1/service/iris/score?x=1")
            .insert_header(("Host", "evil.example"))
            .to_http_request();
        let target = |public_host: Option<&str>| {
            actix_web::web::Data::new(RedirectTarget {
                https_port: 8443,
                public_host: public_host.map(String::from),
            })
        };
        let location = |response: actix_web::HttpResponse| {
            response
                .headers()
                .get(actix_web::http::header::LOCATION)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        let own = location(redirect_to_https(request.clone(), target(None)).await);
        assert!(!own.contains("evil"), "{own}");
        assert!(
            own.ends_with(":8443/api/v1/service/iris/score?x=1"),
            "{own}"
        );
        let public = location(redirect_to_https(request, target(Some("ml.example.com"))).await);
        assert_eq!(
            public,
            "https://ml.example.com:8443/api/v1/service/iris/score?x=1"
        );
    }

    #[test]
    fn unreadable_or_mismatched_files_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = server_config(&missing, &missing).unwrap_err().to_string();
        assert!(
            error.contains("certificate") && error.contains("missing.pem"),
            "{error}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = server_config(&empty, &empty).unwrap_err().to_string();
        assert!(error.contains("no certificate"), "{error}");
    }
}
