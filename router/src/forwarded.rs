//! The replica routes a scoring caller may reach through the router, and nothing else: the
//! v2 inference protocol's health, server and model metadata, model configuration and infer.
//! A replica's internal routes (its busy state, metrics, repository control) answer only the
//! router, and a path that is not one of these, once its segments are checked, is 404 here.

use actix_web::http::Method;

/// What a forwarded request does at the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaRoute {
    /// Azure's `POST /score`.
    Score,
    /// `GET /swagger.json`.
    Swagger,
    /// `POST /v2/models/{model}[/versions/{version}]/infer`.
    Infer(String),
    /// A v2 read: health, server or model metadata, model readiness or configuration.
    Read(String),
}

impl ReplicaRoute {
    /// The path to request at the replica.
    pub fn path(&self) -> &str {
        match self {
            ReplicaRoute::Score => "/score",
            ReplicaRoute::Swagger => "/swagger.json",
            ReplicaRoute::Infer(path) | ReplicaRoute::Read(path) => path,
        }
    }

    /// Whether the request is scoring (what data collection records).
    pub fn scores(&self) -> bool {
        matches!(self, ReplicaRoute::Score | ReplicaRoute::Infer(_))
    }
}

/// A model name as a repository directory may be called: no separators, no dot segments, no
/// escapes.
fn model_name(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 255
        && !segment.starts_with('.')
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn version(segment: &str) -> bool {
    !segment.is_empty() && segment.len() <= 19 && segment.bytes().all(|b| b.is_ascii_digit())
}

/// The replica route for the v2 tail of a webservice's path (what follows `/v2`, already
/// percent-decoded by the router's matcher), or `None` when a scoring caller may not go there.
pub fn v2_route(tail: &str, method: &Method) -> Option<ReplicaRoute> {
    let segments: Vec<&str> = match tail {
        "" => Vec::new(),
        tail => tail.strip_prefix('/')?.split('/').collect(),
    };
    let get = method == Method::GET;
    let read = |path: String| get.then_some(ReplicaRoute::Read(path));
    match segments.as_slice() {
        [] => read("/v2".into()),
        ["health", probe @ ("live" | "ready")] => read(format!("/v2/health/{probe}")),
        ["models", model, rest @ ..] if model_name(model) => {
            let (prefix, rest) = match rest {
                ["versions", v, rest @ ..] if version(v) => {
                    (format!("/v2/models/{model}/versions/{v}"), rest)
                }
                rest => (format!("/v2/models/{model}"), rest),
            };
            match rest {
                [] => read(prefix),
                [what @ ("ready" | "config")] => read(format!("{prefix}/{what}")),
                ["infer"] if method == Method::POST => {
                    Some(ReplicaRoute::Infer(format!("{prefix}/infer")))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_inference_protocol_passes() {
        let get = |tail| v2_route(tail, &Method::GET).map(|r| r.path().to_string());
        let post = |tail| v2_route(tail, &Method::POST);
        assert_eq!(get("").as_deref(), Some("/v2"));
        assert_eq!(get("/health/ready").as_deref(), Some("/v2/health/ready"));
        assert_eq!(get("/models/iris").as_deref(), Some("/v2/models/iris"));
        assert_eq!(
            get("/models/iris/versions/2/config").as_deref(),
            Some("/v2/models/iris/versions/2/config")
        );
        assert_eq!(
            post("/models/text-cls_v1.2/infer"),
            Some(ReplicaRoute::Infer("/v2/models/text-cls_v1.2/infer".into()))
        );
    }

    #[test]
    fn internal_routes_and_traversal_do_not() {
        for tail in [
            "/../modelpod/busy",
            "/../metrics",
            "/../swagger.json",
            "/../score",
            "/models/../../metrics",
            "/models/./infer",
            "/models/iris/../../modelpod/busy",
            "/models/..%2fmetrics/infer",
            "/models/iris%2f..%2f..%2fmetrics/ready",
            "/repository/index",
            "/repository/models/iris/unload",
            "/repository/models/iris/load",
            "/models/iris/versions/x/infer",
            "/models/iris//infer",
            "//models/iris/infer",
            "/models/iris/infer/",
            "/health/live/../../metrics",
            "/../v2/models/iris/infer",
            "/models/.hidden/ready",
            "../metrics",
        ] {
            for method in [Method::GET, Method::POST, Method::DELETE, Method::PUT] {
                assert_eq!(v2_route(tail, &method), None, "{method} {tail}");
            }
        }
        assert_eq!(v2_route("/models/iris/infer", &Method::GET), None);
        assert_eq!(v2_route("/models/iris", &Method::POST), None);
    }

    proptest! {
        /// Whatever the tail, what is forwarded is a v2 path with no dot segment, no escape
        /// and no empty segment.
        #[test]
        fn forwarded_paths_stay_in_v2(tail in "(/(\\.\\.|\\.|models|versions|1|iris|infer|ready|config|health|live|%2e|%2f|repository|))*") {
            for method in [Method::GET, Method::POST] {
                if let Some(route) = v2_route(&tail, &method) {
                    let path = route.path();
                    prop_assert!(path == "/v2" || path.starts_with("/v2/"));
                    prop_assert!(!path.contains('%'));
                    for segment in path[1..].split('/') {
                        prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
                    }
                }
            }
        }
    }
}
