//! Controlled rollout and authentication at the router, as a user drives them: endpoints with
//! versions and a traffic split, created with `modelpod endpoint ...`, refused changes, a
//! restart that keeps everything, and an auth matrix over every route.

use modelpod_scoring::v2::INFERENCE_HEADER_CONTENT_LENGTH;
use modelpod_tests::process::{RouterBuilder, RouterProcess, free_port, http, serve_pid};
use modelpod_tests::records::collected_records;
use modelpod_tests::slow_infer_body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "rollout-admin-key";

fn slow_repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/slow-models")
}

/// `modelpod route` keeping its state and log in `dir`, with `args`.
fn start_router(dir: &Path, port: u16, args: &[&str]) -> RouterProcess {
    RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .dir(dir)
        .port(port)
        .admin_key(ADMIN_KEY)
        .args(args)
        .start()
}

/// Waits until every version of `kind`/`name` has a ready replica; returns its status.
fn wait_ready(router: &RouterProcess, kind: &str, name: &str) -> Value {
    let path = format!("/modelpod/{kind}/{name}");
    router
        .wait_for(
            Duration::from_secs(60),
            |router| router.admin(reqwest::Method::GET, &path, None),
            |(status, body)| {
                *status == 200
                    && body["versions"].as_array().is_some_and(|v| {
                        !v.is_empty() && v.iter().all(|v| v["ready_replicas"] == 1)
                    })
            },
        )
        .1
}

/// One slow-model inference through `path` with this bearer credential: status and the
/// version that answered.
fn infer(router: &RouterProcess, path: &str, credential: Option<&str>) -> (u16, Option<String>) {
    let (header_length, body) = slow_infer_body(1);
    let mut request = http()
        .post(router.url(path))
        .header(INFERENCE_HEADER_CONTENT_LENGTH, header_length)
        .body(body);
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let response = request.send().unwrap();
    let version = response
        .headers()
        .get("x-modelpod-version")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), version)
}

#[test]
fn an_endpoint_splits_traffic_refuses_bad_changes_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let router = start_router(dir.path(), port, &[]);
    let repository = slow_repository();
    let repository = repository.to_str().unwrap();

    let collected = dir.path().join("collected");
    let (ok, out) = router.cli(&["endpoint", "create", "ep", "--description", "rollout"]);
    assert!(ok, "{out}");
    let (ok, out) = router.cli(&[
        "endpoint",
        "version-create",
        "ep",
        "blue",
        "--model-repository",
        repository,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = router.cli(&[
        "endpoint",
        "version-create",
        "ep",
        "green",
        "--model-repository",
        repository,
        "--traffic-percentile",
        "20",
        "--tag",
        "stage=canary",
        "--data-collection",
        collected.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let endpoint = wait_ready(&router, "endpoints", "ep");
    assert_eq!(
        endpoint["versions"][0]["is_default"], true,
        "the first version is the default"
    );
    assert_eq!(endpoint["versions"][1]["tags"]["stage"], "canary");
    assert_eq!(endpoint["scoring_uri"], "/api/v1/endpoint/ep/score");

    let (ok, keys) = router.cli(&["endpoint", "keys", "ep"]);
    assert!(ok, "{keys}");
    let keys: Value = serde_json::from_str(&keys).unwrap();
    let primary = keys["primaryKey"].as_str().unwrap().to_string();
    assert!(primary.len() >= 32, "keys are long random strings");
    // Azure's spelling of the key's name works as written.
    let (ok, rotated) = router.cli(&["endpoint", "regen-key", "ep", "--key", "Primary"]);
    assert!(ok, "{rotated}");
    let rotated: Value = serde_json::from_str(&rotated).unwrap();
    let primary = rotated["primaryKey"].as_str().unwrap().to_string();
    assert_ne!(primary, keys["primaryKey"].as_str().unwrap());
    assert_eq!(rotated["secondaryKey"], keys["secondaryKey"]);

    // 80/20: the default (blue, 0 %) takes what green (20 %) does not claim. Binomial with
    // n = 1000, p = 0.2: sd 12.6, so 200 +/- 60 fails by chance about once in 10^6 runs.
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1000 {
        let (status, version) = infer(
            &router,
            "/api/v1/endpoint/ep/v2/models/slow/infer",
            Some(&primary),
        );
        assert_eq!(status, 200);
        *answered
            .entry(version.expect("every answer names its version"))
            .or_default() += 1;
    }
    let green = answered.get("green").copied().unwrap_or(0);
    assert!((140..=260).contains(&green), "{answered:?}");
    assert_eq!(answered["blue"] + green, 1000);

    // Refused changes say why and change nothing.
    use reqwest::Method;
    let before = router.admin(Method::GET, "/modelpod/endpoints/ep", None).1;
    // The listing shows what each version takes: the default blue the 80 % green leaves.
    let shares: BTreeMap<String, f64> = before["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap().to_string();
            (name, v["traffic_percentile"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(
        shares,
        BTreeMap::from([("blue".into(), 80.0), ("green".into(), 20.0)])
    );
    let refusals = [
        (
            Method::POST,
            "/modelpod/endpoints/ep/versions",
            Some(json!({"name": "red", "model_repository": repository, "traffic_percentile": 90})),
            "add up to 110",
        ),
        (
            Method::PATCH,
            "/modelpod/endpoints/ep/versions/green",
            Some(json!({"traffic_percentile": 101})),
            "at most 100",
        ),
        (
            Method::DELETE,
            "/modelpod/endpoints/ep/versions/blue",
            None,
            "make another version the default",
        ),
        (
            Method::PATCH,
            "/modelpod/endpoints/ep/versions/green",
            Some(json!({"traffic_percentile": "lots"})),
            "request body",
        ),
        (
            Method::PATCH,
            "/modelpod/endpoints/ep",
            Some(json!({"auth_enabled": true, "token_auth_enabled": true})),
            "cannot both be enabled",
        ),
    ];
    for (method, path, body, says) in refusals {
        let (status, answer) = router.admin(method.clone(), path, body);
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    let (ok, out) = router.cli(&[
        "endpoint",
        "version-update",
        "ep",
        "blue",
        "--control",
        "true",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = router.cli(&[
        "endpoint",
        "version-update",
        "ep",
        "green",
        "--control",
        "true",
    ]);
    assert!(!ok && out.contains("one control version"), "{out}");
    let (status, _) = router.admin(Method::PUT, "/modelpod/endpoints/ep", Some(json!({})));
    assert_eq!(status, 409, "names are unique");
    let (status, _) = router.admin(Method::DELETE, "/modelpod/endpoints/nope", None);
    assert_eq!(status, 404);
    let after = router.admin(Method::GET, "/modelpod/endpoints/ep", None).1;
    assert_eq!(after["versions"][0]["is_control_version"], true);
    let strip = |mut v: Value| {
        for version in v["versions"].as_array_mut().unwrap() {
            for volatile in [
                "replicas",
                "busy_replicas",
                "ready_replicas",
                "target_replicas",
                "processes",
                "is_control_version",
            ] {
                version.as_object_mut().unwrap().remove(volatile);
            }
        }
        v
    };
    assert_eq!(strip(before), strip(after.clone()));

    // A restart keeps the endpoint, its versions, roles and keys.
    router.stop();
    // Green collected every request it answered, as a treatment, flushed at the stop.
    // Labelled with the version the replica ran, not the request's words.
    let partition = collected.join("ep/slow/1/treatment");
    let records = collected_records(&partition);
    assert_eq!(
        records.len(),
        green,
        "one record per request green answered"
    );
    assert!(records.iter().all(|r| r["endpoint_version"] == "green"
        && r["designation"] == "treatment"
        && r["service"] == "ep"));
    let router = start_router(dir.path(), port, &[]);
    let restored = wait_ready(&router, "endpoints", "ep");
    assert_eq!(strip(restored.clone()), strip(after));
    assert_eq!(restored["versions"][0]["is_control_version"], true);
    let (status, version) = infer(
        &router,
        "/api/v1/endpoint/ep/v2/models/slow/infer",
        Some(&primary),
    );
    assert_eq!(status, 200);
    assert!(version.is_some());

    // Moving the default to green and deleting blue leaves one version taking everything.
    let (ok, out) = router.cli(&["endpoint", "version-update", "ep", "green", "--default"]);
    assert!(ok, "{out}");
    let (ok, out) = router.cli(&["endpoint", "version-delete", "ep", "blue"]);
    assert!(ok, "{out}");
    for _ in 0..20 {
        let (status, version) = infer(
            &router,
            "/api/v1/endpoint/ep/v2/models/slow/infer",
            Some(&primary),
        );
        assert_eq!((status, version.as_deref()), (200, Some("green")));
    }
    let logs = router
        .admin(Method::GET, "/modelpod/endpoints/ep/logs?limit=5", None)
        .1;
    assert_eq!(logs["requests"].as_array().unwrap().len(), 5);
    assert_eq!(logs["requests"][4]["version"], "green");
}

#[test]
fn an_endpoint_takes_six_versions_and_refuses_a_seventh_without_a_trace() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let router = start_router(dir.path(), free_port(), &["--auth", "none"]);
    let repository = slow_repository();
    let (status, answer) = router.admin(Method::PUT, "/modelpod/endpoints/six", Some(json!({})));
    assert_eq!(status, 201, "{answer}");
    let versions = "/modelpod/endpoints/six/versions";
    for i in 1..=6 {
        let (status, answer) = router.admin(
            Method::POST,
            versions,
            Some(json!({"name": format!("v{i}"), "model_repository": repository})),
        );
        assert_eq!(status, 201, "version {i}: {answer}");
    }
    let six = wait_ready(&router, "endpoints", "six");
    let saved = std::fs::read(dir.path().join("router-state.json")).unwrap();

    let (status, answer) = router.admin(
        Method::POST,
        versions,
        Some(json!({"name": "v7", "model_repository": repository})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("6 versions already"),
        "{answer}"
    );
    let (_, after) = router.admin(Method::GET, "/modelpod/endpoints/six", None);
    let names = |endpoint: &Value| -> Vec<String> {
        endpoint["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&after).len(), 6);
    assert_eq!(names(&after), names(&six));
    assert_eq!(
        std::fs::read(dir.path().join("router-state.json")).unwrap(),
        saved,
        "a refused change is not saved"
    );
}

/// Every route, every kind of credential (a service's keys do not open another's routes, nor
/// the admin key a scoring route): only the right one opens a route, and each route refuses
/// every wrong credential with the same 401 body, which names the kind of credential it takes.
#[test]
fn auth_matrix_over_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let repository = slow_repository();
    let config = dir.path().join("router.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"keyed\"\nmodel_repository = {0:?}\n\n\
             [[service]]\nname = \"tokened\"\nmodel_repository = {0:?}\nauth = \"token\"\n",
            repository.display().to_string()
        ),
    )
    .unwrap();
    let router = start_router(
        dir.path(),
        free_port(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--token-lifetime-s",
            "600",
        ],
    );
    use reqwest::Method;
    let (status, answer) = router.admin(
        Method::PUT,
        "/modelpod/endpoints/ep",
        Some(json!({"versions": [{"name": "v1", "model_repository": repository}]})),
    );
    assert_eq!(status, 201, "{answer}");
    wait_ready(&router, "services", "keyed");
    wait_ready(&router, "services", "tokened");
    wait_ready(&router, "endpoints", "ep");
    let endpoint_key = router
        .admin(Method::GET, "/modelpod/endpoints/ep/keys", None)
        .1["secondaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    let keys = router
        .admin(Method::GET, "/modelpod/services/keyed/keys", None)
        .1;
    let (primary, secondary) = (
        keys["primaryKey"].as_str().unwrap().to_string(),
        keys["secondaryKey"].as_str().unwrap().to_string(),
    );
    assert_ne!(primary, secondary);
    let (status, token) = router.admin(Method::POST, "/modelpod/services/tokened/token", None);
    assert_eq!(status, 200, "{token}");
    let token_value = token["access_token"].as_str().unwrap().to_string();
    assert!(token["refresh_by"].as_i64() < token["expiry_on"].as_i64());
    // Tokens the router would refuse, signed with its own secret (read from its state file).
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("router-state.json")).unwrap())
            .unwrap();
    let secret = state["token_secret"].as_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sign = |aud: &str, exp: i64, key: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"iss": "modelpod", "aud": aud, "iat": now - 100, "exp": exp, "refresh_by": exp}),
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let expired = sign("service:tokened", now - 5, secret);
    let other_service = sign("service:keyed", now + 600, secret);
    let forged = sign("service:tokened", now + 600, "not the secret");

    let credentials: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("garbage", Some("garbage".into())),
        ("keyed primary", Some(primary.clone())),
        ("keyed secondary", Some(secondary.clone())),
        ("tokened token", Some(token_value.clone())),
        ("expired token", Some(expired)),
        ("token for keyed", Some(other_service)),
        ("forged token", Some(forged)),
        ("admin", Some(ADMIN_KEY.into())),
        ("endpoint key", Some(endpoint_key)),
    ];
    // Each route and the credentials that open it; every other credential gets 401.
    let (header_length, body) = slow_infer_body(1);
    let public: &[&str] = &[
        "none",
        "garbage",
        "keyed primary",
        "keyed secondary",
        "tokened token",
        "expired token",
        "token for keyed",
        "forged token",
        "admin",
        "endpoint key",
    ];
    let routes: Vec<(Method, String, &[&str])> = vec![
        (Method::GET, "/".into(), public),
        (Method::GET, "/metrics".into(), public),
        (
            Method::GET,
            "/api/v1/service/keyed/swagger.json".into(),
            public,
        ),
        (
            Method::POST,
            "/api/v1/service/keyed/score".into(),
            &["keyed primary", "keyed secondary"],
        ),
        (
            Method::POST,
            "/api/v1/service/keyed/v2/models/slow/infer".into(),
            &["keyed primary", "keyed secondary"],
        ),
        (
            Method::GET,
            "/api/v1/service/keyed/v2/health/ready".into(),
            &["keyed primary", "keyed secondary"],
        ),
        (
            Method::GET,
            "/api/v1/service/keyed/v2/models/slow".into(),
            &["keyed primary", "keyed secondary"],
        ),
        (
            Method::POST,
            "/api/v1/service/tokened/score".into(),
            &["tokened token"],
        ),
        (
            Method::POST,
            "/api/v1/service/tokened/v2/models/slow/infer".into(),
            &["tokened token"],
        ),
        (
            Method::GET,
            "/api/v1/service/tokened/v2/health/ready".into(),
            &["tokened token"],
        ),
        (
            Method::POST,
            "/api/v1/endpoint/ep/score".into(),
            &["endpoint key"],
        ),
        (
            Method::POST,
            "/api/v1/endpoint/ep/v2/models/slow/infer".into(),
            &["endpoint key"],
        ),
        (
            Method::GET,
            "/api/v1/endpoint/ep/v2/health/live".into(),
            &["endpoint key"],
        ),
        (
            Method::GET,
            "/api/v1/endpoint/ep/swagger.json".into(),
            public,
        ),
        (Method::GET, "/modelpod/services".into(), &["admin"]),
        (Method::GET, "/modelpod/endpoints".into(), &["admin"]),
        (Method::GET, "/modelpod/services/keyed".into(), &["admin"]),
        (Method::PUT, "/modelpod/services/keyed".into(), &["admin"]),
        (Method::PATCH, "/modelpod/services/nope".into(), &["admin"]),
        (Method::DELETE, "/modelpod/services/nope".into(), &["admin"]),
        (
            Method::GET,
            "/modelpod/services/keyed/keys".into(),
            &["admin"],
        ),
        (
            Method::POST,
            "/modelpod/services/nope/keys/regenerate".into(),
            &["admin"],
        ),
        (
            Method::POST,
            "/modelpod/services/keyed/token".into(),
            &["admin"],
        ),
        (
            Method::GET,
            "/modelpod/services/keyed/logs".into(),
            &["admin"],
        ),
        (
            Method::POST,
            "/modelpod/endpoints/nope/versions".into(),
            &["admin"],
        ),
        (
            Method::PATCH,
            "/modelpod/endpoints/nope/versions/v".into(),
            &["admin"],
        ),
        (
            Method::DELETE,
            "/modelpod/endpoints/nope/versions/v".into(),
            &["admin"],
        ),
        (
            Method::GET,
            "/modelpod/endpoints/ep/keys".into(),
            &["admin"],
        ),
        (Method::PATCH, "/modelpod/endpoints/ep".into(), &["admin"]),
        (
            Method::GET,
            "/modelpod/endpoints/ep/logs".into(),
            &["admin"],
        ),
        (Method::GET, "/modelpod/anything-else".into(), &["admin"]),
    ];
    // path → the distinct 401 bodies it gave.
    let mut refusals: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (method, path, allowed) in &routes {
        for (who, credential) in &credentials {
            let mut request = http().request(method.clone(), router.url(path));
            if path.ends_with("/infer") {
                request = request
                    .header(INFERENCE_HEADER_CONTENT_LENGTH, header_length)
                    .body(body.clone());
            } else if *method != Method::GET {
                request = request.json(&json!({"data": [[0.5]], "key": "Primary"}));
            }
            if let Some(credential) = credential {
                request = request.bearer_auth(credential);
            }
            let response = request.send().unwrap();
            let status = response.status().as_u16();
            let text = response.text().unwrap();
            if allowed.contains(who) {
                assert_ne!(status, 401, "{method} {path} with {who}: {text}");
            } else {
                assert_eq!(status, 401, "{method} {path} with {who}: {text}");
                refusals.entry(path.clone()).or_default().insert(text);
            }
        }
    }
    // A route refuses every wrong credential alike, naming only what it takes.
    for (path, texts) in &refusals {
        assert_eq!(
            texts.len(),
            1,
            "{path} refuses in different words: {texts:?}"
        );
        let refusal: Value = serde_json::from_str(texts.first().unwrap()).unwrap();
        let message = refusal["error"].as_str().unwrap();
        let expected = if path.starts_with("/modelpod/") {
            "Bearer <admin key>"
        } else if path.contains("/tokened/") {
            "Bearer <token>"
        } else {
            "Bearer <key>"
        };
        assert!(message.contains(expected), "{path}: {message}");
    }

    // Regenerating the primary key retires it and leaves the secondary working.
    let (status, rotated) = router.admin(
        Method::POST,
        "/modelpod/services/keyed/keys/regenerate",
        Some(json!({"key": "Primary"})),
    );
    assert_eq!(status, 200);
    assert_eq!(rotated["secondaryKey"], secondary.as_str());
    let new_primary = rotated["primaryKey"].as_str().unwrap();
    assert_ne!(new_primary, primary);
    let health = "/api/v1/service/keyed/v2/models/slow/infer";
    assert_eq!(infer(&router, health, Some(&primary)).0, 401);
    assert_eq!(infer(&router, health, Some(&secondary)).0, 200);
    assert_eq!(infer(&router, health, Some(new_primary)).0, 200);

    // Switching to token auth: keys stop working, the service's tokens start; a token is
    // refused for a service whose auth is not token.
    let (status, answer) = router.admin(Method::POST, "/modelpod/services/keyed/token", None);
    assert_eq!(status, 400, "{answer}");
    let (ok, out) = router.cli(&["service", "update", "keyed", "--auth", "token"]);
    assert!(ok, "{out}");
    let (ok, out) = router.cli(&["service", "token", "keyed"]);
    assert!(ok, "{out}");
    let issued: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(infer(&router, health, Some(&secondary)).0, 401);
    assert_eq!(
        infer(&router, health, issued["access_token"].as_str()).0,
        200
    );
    // And off: anyone may call.
    let (ok, out) = router.cli(&["service", "update", "keyed", "--auth", "none"]);
    assert!(ok, "{out}");
    assert_eq!(infer(&router, health, None).0, 200);
}

/// Whether a process is gone (or a zombie waiting for its parent).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_router_killed_outright_takes_its_replicas_along_and_restarts_with_its_last_change() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let router = start_router(dir.path(), port, &[]);
    let repository = slow_repository();
    let (status, answer) = router.admin(
        Method::PUT,
        "/modelpod/endpoints/ep",
        Some(json!({"auth": "none", "versions": [{"name": "a", "model_repository": repository}]})),
    );
    assert_eq!(status, 201, "{answer}");
    let ready = wait_ready(&router, "endpoints", "ep");
    let url = ready["versions"][0]["replicas"][0]["url"].as_str().unwrap();
    let replica = serve_pid(url.rsplit(':').next().unwrap().parse().unwrap());
    let (status, _) = router.admin(
        Method::PATCH,
        "/modelpod/endpoints/ep",
        Some(json!({"description": "the last change"})),
    );
    assert_eq!(status, 200);
    // Killed with no chance to clean up: its replica is sent SIGTERM by the kernel.
    router.kill();
    let started = Instant::now();
    while !exited(replica) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "replica {replica} outlived its router"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let router = start_router(dir.path(), port, &[]);
    let restored = wait_ready(&router, "endpoints", "ep");
    assert_eq!(restored["description"], "the last change");
    let (status, version) = infer(&router, "/api/v1/endpoint/ep/v2/models/slow/infer", None);
    assert_eq!((status, version.as_deref()), (200, Some("a")));
}
