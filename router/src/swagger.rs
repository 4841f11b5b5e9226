//! A replica's swagger.json as the router's callers need it: the replica's document names no
//! host (a generator would use the replica's loopback address it was never fetched from), so
//! the router sets its own address, the webservice's base path and the scheme the caller used.

use serde_json::{Value, json};

/// Where a caller reaches a webservice: `https`, `ml.example:443`, `/api/v1/service/iris`.
pub struct CallerView<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub base_path: &'a str,
    pub title: &'a str,
}

/// The document rewritten for `view`, or `None` when it is not a swagger or OpenAPI document
/// (then it is passed on as the replica sent it).
pub fn for_callers(document: &[u8], view: &CallerView<'_>) -> Option<Vec<u8>> {
    let mut document: Value = serde_json::from_slice(document).ok()?;
    let fields = document.as_object_mut()?;
    if fields.contains_key("swagger") {
        fields.insert("host".into(), json!(view.host));
        fields.insert("basePath".into(), json!(view.base_path));
        fields.insert("schemes".into(), json!([view.scheme]));
    } else if fields.contains_key("openapi") {
        fields.insert(
            "servers".into(),
            json!([{ "url": format!("{}://{}{}", view.scheme, view.host, view.base_path) }]),
        );
    } else {
        return None;
    }
    if let Some(info) = fields.get_mut("info").and_then(Value::as_object_mut) {
        info.insert("title".into(), json!(view.title));
    }
    serde_json::to_vec(&document).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEW: CallerView<'static> = CallerView {
        scheme: "https",
        host: "ml.example",
        base_path: "/api/v1/service/iris",
        title: "iris",
    };

    #[test]
    fn swagger_2_gets_host_base_path_and_scheme() {
        let out = for_callers(
            br#"{"swagger": "2.0", "info": {"title": "t"}, "paths": {}}"#,
            &VIEW,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(out["host"], "ml.example");
        assert_eq!(out["basePath"], "/api/v1/service/iris");
        assert_eq!(out["schemes"], json!(["https"]));
        assert_eq!(out["info"]["title"], "iris");
    }

    #[test]
    fn openapi_3_gets_a_server() {
        let out = for_callers(br#"{"openapi": "3.0.3", "paths": {}}"#, &VIEW).unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out["servers"][0]["url"],
            "https://ml.example/api/v1/service/iris"
        );
    }

    #[test]
    fn anything_else_is_left_alone() {
        assert!(for_callers(br#"{"error": "x"}"#, &VIEW).is_none());
        assert!(for_callers(b"not json", &VIEW).is_none());
    }
}
