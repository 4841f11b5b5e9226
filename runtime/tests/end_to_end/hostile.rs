//! What a hostile client and a bad day do to `modelpod serve` and `modelpod route`, on real
//! processes over raw TCP (so paths go out byte for byte, `..` and `%2e` included, and bodies
//! can lie about their length or never end). Each test prints its figures; `benches/
//! reliability.sh` runs the long parts (1 500 connections, overload, a minute of crashes).
//!
//! Run them with their figures: `cargo test --workspace --test end_to_end hostile -- --nocapture`.

use modelpod_tests::process::{RouterBuilder, RouterProcess, ServeBuilder, serve_pid};
use modelpod_tests::records::files_under;
use modelpod_tests::workspace_root;
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "hostile-admin-key";
const SERVE_KEY: &str = "hostile-serve-key";

fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/models")
}

fn modelpod() -> &'static str {
    env!("CARGO_BIN_EXE_modelpod")
}

/// An answer read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    text: String,
    first_byte: Duration,
}

/// Sends `request` as is on a new connection and reads the answer until the server closes it
/// (every request here says `Connection: close`) or `limit` passes.
fn exchange(address: &str, request: &[u8], limit: Duration) -> Option<Answer> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    let sent = Instant::now();
    // A server may answer (413, 401) and close before taking all of a large body.
    let _ = stream.write_all(request);
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let mut first_byte = None;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                first_byte.get_or_insert_with(|| sent.elapsed());
                received.extend_from_slice(&buffer[..n]);
            }
            Err(_) => break,
        }
        if sent.elapsed() > limit {
            break;
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        text,
        first_byte: first_byte?,
    })
}

/// An HTTP/1.1 request with `Connection: close`; a `Content-Length` is added for the body
/// unless `headers` bring their own framing.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: modelpod.test\r\nConnection: close\r\n");
    let framed = headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    });
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !framed {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Marks of a scoring server's internal routes in an answer: what a traversal must never get.
fn internal(answer: &Answer) -> bool {
    [
        "\"in_flight\"",
        "# TYPE",
        "\"swagger\"",
        "\"state\":",
        "modelpod_",
    ]
    .iter()
    .any(|mark| answer.text.contains(mark))
}

/// Hostile requests by outcome, and the two counts that must stay 0.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, usize>,
    /// Requests without a valid credential that a protected route accepted.
    accepted_without_credentials: Vec<String>,
    /// Traversal requests that reached a replica's internal route.
    traversals_reaching_internal: Vec<String>,
    /// 5xx answers no design calls for (anything but 503 and 504).
    undesigned_5xx: Vec<String>,
    /// Requests that got no answer at all.
    unanswered: Vec<String>,
}

impl Tally {
    fn send(&mut self, address: &str, what: &str, raw: &[u8]) -> Option<Answer> {
        let answer = exchange(address, raw, Duration::from_secs(30));
        match &answer {
            None => self.unanswered.push(what.to_string()),
            Some(a) => {
                *self.by_status.entry(a.status).or_default() += 1;
                if a.status >= 500 && a.status != 503 && a.status != 504 {
                    self.undesigned_5xx.push(format!("{what}: {}", a.text));
                }
            }
        }
        answer
    }

    /// A request without a valid credential to a route that needs one.
    fn unauthenticated(&mut self, address: &str, what: &str, raw: &[u8]) {
        if let Some(answer) = self.send(address, what, raw)
            && answer.status != 401
        {
            self.accepted_without_credentials
                .push(format!("{what} -> {}", answer.status));
        }
    }

    fn traversal(&mut self, address: &str, what: &str, raw: &[u8]) {
        if let Some(answer) = self.send(address, what, raw)
            && ((200..300).contains(&answer.status) || internal(&answer))
        {
            self.traversals_reaching_internal
                .push(format!("{what} -> {}: {}", answer.status, answer.text));
        }
    }

    fn total(&self) -> usize {
        self.by_status.values().sum::<usize>() + self.unanswered.len()
    }

    fn assert_clean(&self) {
        assert!(
            self.accepted_without_credentials.is_empty(),
            "accepted without credentials: {:#?}",
            self.accepted_without_credentials
        );
        assert!(
            self.traversals_reaching_internal.is_empty(),
            "traversals reached internal routes: {:#?}",
            self.traversals_reaching_internal
        );
        assert!(
            self.undesigned_5xx.is_empty(),
            "undesigned 5xx: {:#?}",
            self.undesigned_5xx
        );
        assert!(
            self.unanswered.is_empty(),
            "unanswered: {:#?}",
            self.unanswered
        );
    }
}

fn address_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// A malformed request: what it is, its extra headers, its body.
type BadBody = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

/// Bodies that are not what the protocols say, for scoring routes that have the key.
fn bad_bodies() -> Vec<BadBody> {
    let deep = "[".repeat(100_000);
    let long_number = "1".repeat(100_000);
    vec![
        ("not json", vec![], b"{not json".to_vec()),
        ("empty", vec![], Vec::new()),
        ("a number beyond FP32", vec![], br#"{"data": [[1e39, 1, 1, 1]]}"#.to_vec()),
        ("a 100 000-digit number", vec![], format!(r#"{{"data": [[{long_number}, 1, 1, 1]]}}"#).into_bytes()),
        ("100 000 levels of nesting, unclosed", vec![], format!(r#"{{"data": {deep}"#).into_bytes()),
        ("100 000 levels of nesting", vec![], format!(r#"{{"data": {deep}{}}}"#, "]".repeat(100_000)).into_bytes()),
        ("ragged rows", vec![], br#"{"data": [[1, 2, 3, 4], [1]]}"#.to_vec()),
        ("strings for numbers", vec![], br#"{"data": [["a", "b", "c", "d"]]}"#.to_vec()),
        ("an object for data", vec![], br#"{"data": {"__proto__": 1}}"#.to_vec()),
        ("invalid UTF-8", vec![], b"{\"data\": [[\xff\xfe, 1, 1, 1]]}".to_vec()),
        ("a NUL byte", vec![], b"{\"data\": [[1, 2, 3,\x00 4]]}".to_vec()),
        ("v2 without inputs", vec![], br#"{"outputs": []}"#.to_vec()),
        ("v2 with a shape that overflows", vec![], br#"{"inputs": [{"name": "x", "shape": [4294967296, 4294967296], "datatype": "FP32", "data": [1]}]}"#.to_vec()),
        ("v2 with an unknown datatype", vec![], br#"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP128", "data": [1, 2, 3, 4]}]}"#.to_vec()),
        ("v2 binary size past the body", vec![("Inference-Header-Content-Length", "10".into())], b"{\"a\": 1}\n\n".to_vec()),
        ("binary header length past the body", vec![("Inference-Header-Content-Length", "999999".into())], b"{}".to_vec()),
        ("binary header length not a number", vec![("Inference-Header-Content-Length", "-1".into())], b"{}".to_vec()),
        ("declared larger than the limit", vec![("Content-Length", "104857601".into())], Vec::new()),
        ("two Content-Lengths", vec![("Content-Length", "2".into()), ("Content-Length", "3".into())], b"{}".to_vec()),
        ("chunked and a length", vec![("Transfer-Encoding", "chunked".into()), ("Content-Length", "5".into())], b"2\r\n{}\r\n0\r\n\r\n".to_vec()),
        ("a bad chunk size", vec![("Transfer-Encoding", "chunked".into())], b"zz\r\n{}\r\n0\r\n\r\n".to_vec()),
    ]
}

/// `modelpod route` with a key-auth service over the fixture models, data collection on.
fn start_router(collected: &Path, extra: &[&str]) -> (RouterProcess, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deploymentconfig.json");
    std::fs::write(
        &config,
        json!({"numReplicas": 1, "maxConcurrentRequestsPerContainer": 4, "scoringTimeoutMs": 10000})
            .to_string(),
    )
    .unwrap();
    let router = RouterBuilder::new(modelpod())
        .owned_dir(dir)
        .admin_key(ADMIN_KEY)
        .args(["--service", "svc", "--auth", "key", "--model-repository"])
        .arg(fixtures())
        .arg("--deployment-config")
        .arg(&config)
        .arg("--data-collection")
        .arg(collected)
        // The fixtures hold a model that fails to load on purpose.
        .args(["--serve-arg=--strict-readiness", "--serve-arg=false"])
        .args(extra)
        .start();
    router.wait_for(
        Duration::from_secs(60),
        |r| r.admin(Method::GET, "/modelpod/services/svc", None).1,
        |s| s["versions"][0]["ready_replicas"].as_u64() >= Some(1),
    );
    let keys = router
        .admin(Method::GET, "/modelpod/services/svc/keys", None)
        .1;
    let key = keys["primaryKey"].as_str().unwrap().to_string();
    (router, key)
}

/// Every scoring route of a service through the router, as (method, tail, body).
const ROUTER_SCORING_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/score?model=mlp", r#"{"data": [[1, 2, 3, 4]]}"#),
    ("GET", "/v2", ""),
    ("GET", "/v2/health/live", ""),
    ("GET", "/v2/health/ready", ""),
    ("GET", "/v2/models/mlp", ""),
    ("GET", "/v2/models/mlp/versions/1", ""),
    ("GET", "/v2/models/mlp/ready", ""),
    ("GET", "/v2/models/mlp/config", ""),
    ("POST", "/v2/models/mlp/infer", r#"{"inputs": []}"#),
    (
        "POST",
        "/v2/models/mlp/versions/1/infer",
        r#"{"inputs": []}"#,
    ),
];

/// Management routes, as (method, path, body).
const ADMIN_ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/modelpod/services", ""),
    ("GET", "/modelpod/services/svc", ""),
    (
        "PUT",
        "/modelpod/services/evil",
        r#"{"model_repository": "/"}"#,
    ),
    ("PATCH", "/modelpod/services/svc", r#"{"auth": "none"}"#),
    ("DELETE", "/modelpod/services/svc", ""),
    ("GET", "/modelpod/services/svc/keys", ""),
    (
        "POST",
        "/modelpod/services/svc/keys/regenerate",
        r#"{"key": "Primary"}"#,
    ),
    ("POST", "/modelpod/services/svc/token", ""),
    ("GET", "/modelpod/services/svc/logs", ""),
    ("GET", "/modelpod/endpoints", ""),
    ("POST", "/modelpod/endpoints/ep/versions", "{}"),
];

#[test]
fn hostile_requests_to_every_route_of_serve_and_route() {
    let collected = tempfile::tempdir().unwrap();
    let (router, key) = start_router(collected.path(), &[]);
    let front = address_of(&router.url(""));
    let mut tally = Tally::default();
    let bearer = |k: &str| format!("Bearer {k}");

    // Credentials that are not the service's key, on every scoring route.
    let wrong: Vec<(&str, Option<String>)> = vec![
        ("no credential", None),
        ("a wrong key", Some(bearer("nope"))),
        ("the admin key", Some(bearer(ADMIN_KEY))),
        (
            "the key in the wrong case",
            Some(bearer(&key.to_uppercase())),
        ),
        ("a key prefix", Some(bearer(&key[..key.len() - 1]))),
        ("Basic auth", Some(format!("Basic {key}"))),
        (
            "an unsigned token",
            Some(bearer("eyJhbGciOiJub25lIn0.eyJhdWQiOiJzZXJ2aWNlOnN2YyJ9.")),
        ),
    ];
    for (method, tail, body) in ROUTER_SCORING_ROUTES {
        let path = format!("/api/v1/service/svc{tail}");
        for (what, credential) in &wrong {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(credential) = credential {
                headers.push(("Authorization", credential.as_str()));
            }
            tally.unauthenticated(
                &front,
                &format!("route {method} {path} with {what}"),
                &request(method, &path, &headers, body.as_bytes()),
            );
        }
    }
    // The management API with anything but the admin key.
    for (method, path, body) in ADMIN_ROUTES {
        for credential in [None, Some(bearer(&key)), Some(bearer("nope"))] {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(credential) = &credential {
                headers.push(("Authorization", credential.as_str()));
            }
            tally.unauthenticated(
                &front,
                &format!("route {method} {path} with {credential:?}"),
                &request(method, path, &headers, body.as_bytes()),
            );
        }
    }
    // With the service's key: out of the v2 tail into the replica's internal routes.
    let internal_routes = [
        "modelpod/busy",
        "metrics",
        "swagger.json",
        "score",
        "v2/repository/index",
        "v2/repository/models/mlp/unload",
        "v2/repository/models/mlp/load",
    ];
    let escapes = [
        "/v2/../{}",
        "/v2/%2e%2e/{}",
        "/v2/%2E%2E/{}",
        "/v2/models/../../{}",
        "/v2/./../{}",
        "/v2/..%2f{}",
        "/v2/models/mlp/../../../{}",
        "/v2//../{}",
        "/v2/{}",
    ];
    let auth = bearer(&key);
    for target in internal_routes {
        for escape in escapes {
            let path = format!("/api/v1/service/svc{}", escape.replace("{}", target));
            for method in ["GET", "POST"] {
                tally.traversal(
                    &front,
                    &format!("route {method} {path}"),
                    &request(
                        method,
                        &path,
                        &[
                            ("Authorization", auth.as_str()),
                            ("Content-Type", "application/json"),
                        ],
                        b"{}",
                    ),
                );
            }
        }
    }
    // With the key: bodies that are not what the protocols say.
    for (what, headers, body) in bad_bodies() {
        for tail in ["/score?model=mlp", "/v2/models/mlp/infer"] {
            let path = format!("/api/v1/service/svc{tail}");
            let mut all = vec![
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            all.extend(headers.iter().map(|(n, v)| (*n, v.as_str())));
            if let Some(answer) = tally.send(
                &front,
                &format!("route {path}: {what}"),
                &request("POST", &path, &all, &body),
            ) {
                assert!(
                    (400..500).contains(&answer.status),
                    "route {path}: {what}: {}",
                    answer.text
                );
            }
        }
    }
    // Names from the request never become data-collection labels.
    for path in [
        "/api/v1/service/svc/score?model=EVIL",
        "/api/v1/service/svc/score?model=..",
        "/api/v1/service/svc/score?model=mlp&version=..",
        "/api/v1/service/svc/v2/models/EVIL/infer",
        "/api/v1/service/svc/v2/models/..%2f..%2fetc/infer",
    ] {
        tally.send(
            &front,
            &format!("route POST {path}"),
            &request(
                "POST",
                path,
                &[("Authorization", auth.as_str())],
                br#"{"data": [[1, 2, 3, 4]]}"#,
            ),
        );
    }
    // The replica itself, straight: it takes only the router's key.
    let replica = router.admin(Method::GET, "/modelpod/services/svc", None).1["versions"][0]
        ["replicas"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let replica = address_of(&replica);
    for (method, path, body) in [
        ("GET", "/v2/models/mlp", ""),
        ("GET", "/modelpod/busy?wait_ms=0", ""),
        ("GET", "/metrics", ""),
        ("POST", "/score?model=mlp", r#"{"data": [[1, 2, 3, 4]]}"#),
        ("POST", "/v2/models/mlp/infer", r#"{"inputs": []}"#),
        ("POST", "/v2/repository/index", ""),
        ("POST", "/v2/repository/models/mlp/unload", ""),
    ] {
        for credential in [None, Some(auth.clone()), Some(bearer(ADMIN_KEY))] {
            let mut headers = vec![];
            if let Some(credential) = &credential {
                headers.push(("Authorization", credential.as_str()));
            }
            tally.unauthenticated(
                &replica,
                &format!("replica {method} {path} with {credential:?}"),
                &request(method, path, &headers, body.as_bytes()),
            );
        }
    }

    // The scoring server on its own, with a key and repository control on.
    let serve = ServeBuilder::new(modelpod(), &fixtures())
        .args([
            "--api-key",
            SERVE_KEY,
            "--model-control-mode",
            "explicit",
            "--load-policy",
            "lazy",
        ])
        .start();
    let server = address_of(&serve.url(""));
    let serve_routes: &[(&str, &str)] = &[
        ("POST", "/score?model=mlp"),
        ("GET", "/metrics"),
        ("GET", "/v2"),
        ("GET", "/v2/models/mlp"),
        ("GET", "/v2/models/mlp/versions/1"),
        ("GET", "/v2/models/mlp/ready"),
        ("GET", "/v2/models/mlp/config"),
        ("POST", "/v2/models/mlp/infer"),
        ("GET", "/modelpod/busy?wait_ms=10000"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/mlp/load"),
        ("POST", "/v2/repository/models/mlp/unload"),
        ("GET", "/v2/../metrics"),
        ("DELETE", "/v2/models/mlp"),
    ];
    for (method, path) in serve_routes {
        for credential in [
            None,
            Some(bearer("nope")),
            Some(format!("Bearer {SERVE_KEY}x")),
        ] {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(credential) = &credential {
                headers.push(("Authorization", credential.as_str()));
            }
            tally.unauthenticated(
                &server,
                &format!("serve {method} {path} with {credential:?}"),
                &request(method, path, &headers, b"{}"),
            );
        }
    }
    let serve_auth = bearer(SERVE_KEY);
    for (what, headers, body) in bad_bodies() {
        for path in ["/score?model=mlp", "/v2/models/mlp/infer"] {
            let mut all = vec![
                ("Authorization", serve_auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            all.extend(headers.iter().map(|(n, v)| (*n, v.as_str())));
            if let Some(answer) = tally.send(
                &server,
                &format!("serve {path}: {what}"),
                &request("POST", path, &all, &body),
            ) {
                assert!(
                    (400..500).contains(&answer.status),
                    "serve {path}: {what}: {}",
                    answer.text
                );
            }
        }
    }
    // Public routes stay public.
    for path in ["/", "/v2/health/live", "/v2/health/ready", "/swagger.json"] {
        let answer = tally
            .send(
                &server,
                &format!("serve GET {path}"),
                &request("GET", path, &[], b""),
            )
            .unwrap();
        assert_eq!(answer.status, 200, "{path}");
    }
    let public = tally
        .send(
            &front,
            "route swagger",
            &request("GET", "/api/v1/service/svc/swagger.json", &[], b""),
        )
        .unwrap();
    assert_eq!(public.status, 200, "swagger is public, as on Azure");

    // Still serving, and what was collected is only scoring, labelled by what ran.
    let scored = exchange(
        &front,
        &request(
            "POST",
            "/api/v1/service/svc/score?model=mlp",
            &[("Authorization", auth.as_str())],
            br#"{"data": [[1, 2, 3, 4]]}"#,
        ),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(scored.status, 200, "{}", scored.text);
    println!(
        "hostile requests: {} by status {:?}; accepted without valid credentials: {}; traversals reaching an internal route: {}; undesigned 5xx: {}",
        tally.total(),
        tally.by_status,
        tally.accepted_without_credentials.len(),
        tally.traversals_reaching_internal.len(),
        tally.undesigned_5xx.len()
    );
    tally.assert_clean();
    assert!(tally.total() >= 300, "{} hostile requests", tally.total());
    drop(serve);
    router.stop();
    let labels: Vec<String> = files_under(&collected.path().join("svc"))
        .iter()
        .map(|f| {
            f.strip_prefix(collected.path().join("svc"))
                .unwrap()
                .components()
                .take(2)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    assert!(!labels.is_empty(), "the scored requests were collected");
    for label in labels {
        assert_eq!(
            label, "mlp/1",
            "a collected record labelled from the request"
        );
    }
}

fn status_line(raw: &str) -> &str {
    raw.lines().next().unwrap_or("")
}

#[test]
fn bodies_that_stall_or_lie_get_408_within_the_body_timeout() {
    let serve = ServeBuilder::new(modelpod(), &fixtures())
        .args(["--body-timeout-ms", "1000"])
        .start();
    let collected = tempfile::tempdir().unwrap();
    let (router, key) = start_router(collected.path(), &["--body-timeout-ms", "1000"]);
    let auth = format!("Bearer {key}");
    let targets = [
        (
            address_of(&serve.url("")),
            "/score?model=mlp".to_string(),
            None,
        ),
        (
            address_of(&router.url("")),
            "/api/v1/service/svc/score?model=mlp".to_string(),
            Some(auth.as_str()),
        ),
    ];
    for (address, path, auth) in &targets {
        let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        let lying = {
            let mut h = headers.clone();
            h.push(("Content-Length", "1000"));
            request("POST", path, &h, br#"{"data": [[1, 2, 3, 4]]}    "#)
        };
        headers.push(("Transfer-Encoding", "chunked"));
        let endless_chunk = request("POST", path, &headers, b"ffffffffffffffff\r\n{\"data\"");
        for (what, raw) in [
            ("a Content-Length that lies", lying),
            ("a chunk of 2^64-1 bytes", endless_chunk),
        ] {
            let answer = exchange(address, &raw, Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{what} at {address}: no answer"));
            println!(
                "{what} at {path}: {} after {} ms",
                status_line(&answer.text),
                answer.first_byte.as_millis()
            );
            assert!(
                answer.status == 408 || answer.status == 400,
                "{what}: {}",
                answer.text
            );
            assert!(
                answer.first_byte < Duration::from_secs(3),
                "{what}: {:?}",
                answer.first_byte
            );
        }
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn declared_lengths_reserve_no_memory_and_json_costs_about_its_size() {
    let serve = ServeBuilder::new(modelpod(), &fixtures())
        .args([
            "--body-timeout-ms",
            "3000",
            "--max-concurrent-requests",
            "4",
        ])
        .start();
    let pid = serve.child.id();
    let (virtual_before, resident_before) = (
        proc_status_kib(pid, "VmSize:"),
        proc_status_kib(pid, "VmRSS:"),
    );
    // 300 connections that each declare 100 MB and send nothing more.
    let connections: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(&serve.address).unwrap();
            stream
                .write_all(b"POST /score?model=mlp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let (virtual_during, resident_during) = (
        proc_status_kib(pid, "VmSize:"),
        proc_status_kib(pid, "VmRSS:"),
    );
    println!(
        "300 header-only connections of 100 MB each: virtual {} -> {} MiB, resident {} -> {} MiB",
        virtual_before / 1024,
        virtual_during / 1024,
        resident_before / 1024,
        resident_during / 1024
    );
    assert!(
        virtual_during < virtual_before + 2 * 1024 * 1024,
        "virtual memory grew by {} MiB",
        (virtual_during - virtual_before) / 1024
    );
    assert!(resident_during < resident_before + 200 * 1024);
    let timed_out = connections
        .into_iter()
        .filter(|stream| {
            let mut stream = stream.try_clone().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut head = [0u8; 12];
            // 408 for those whose body was being awaited; the rest waited for a slot in vain.
            stream.read_exact(&mut head).is_ok()
                && (head.ends_with(b"408") || head.ends_with(b"503"))
        })
        .count();
    assert_eq!(timed_out, 300, "every stalled connection is answered 408");

    drop(serve);

    // A 20 MB Azure JSON body costs about its size at the peak, not 25 times it: a linear
    // model that takes any number of rows in one run.
    let repository = tempfile::tempdir().unwrap();
    let linear = modelpod_tests::linear_models::write_repository(repository.path(), 1);
    let name = &linear[0].name;
    std::fs::write(
        repository.path().join(name).join("model.toml"),
        "[batching]\nmax_batch_size = 0\n",
    )
    .unwrap();
    let serve = ServeBuilder::new(modelpod(), repository.path()).start();
    let pid = serve.child.id();
    let rows = 500_000;
    let mut body = String::with_capacity(rows * 40);
    body.push_str("{\"data\": [");
    for i in 0..rows {
        if i > 0 {
            body.push(',');
        }
        body.push_str("[0.123456, 1.234567, 2.345678, 3.456789]");
    }
    body.push_str("]}");
    let peak_before = proc_status_kib(pid, "VmHWM:");
    let answer = exchange(
        &serve.address,
        &request(
            "POST",
            "/score",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        &answer.text[..answer.text.len().min(500)]
    );
    let peak_after = proc_status_kib(pid, "VmHWM:");
    let body_mib = body.len() as f64 / (1 << 20) as f64;
    let per_mib = (peak_after.saturating_sub(peak_before)) as f64 / 1024.0 / body_mib;
    println!(
        "a {body_mib:.1} MiB JSON body ({rows} rows in, {rows} rows out): peak RSS +{per_mib:.2} MiB per MiB of body"
    );
    assert!(
        per_mib < 4.0,
        "peak RSS grew {per_mib:.2} MiB per MiB of JSON body"
    );
}

#[test]
fn an_unstartable_replica_backs_off_and_its_requests_get_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A replica that exits at once: its flags are invalid.
    let router = RouterBuilder::new(modelpod())
        .dir(dir.path())
        .admin_key(ADMIN_KEY)
        .args(["--service", "svc", "--auth", "none", "--model-repository"])
        .arg(fixtures())
        .args([
            "--serve-arg",
            "--max-concurrent-requests",
            "--serve-arg",
            "0",
        ])
        .start();
    std::thread::sleep(Duration::from_secs(10));
    let metrics = reqwest::blocking::get(router.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let restarts =
        modelpod_tests::metric_sum(&metrics, "modelpod_router_replica_restarts_total", &[])
            .unwrap_or(0.0);
    println!(
        "an unstartable replica: {restarts} restarts in 10 s ({:.1} per minute)",
        restarts * 6.0
    );
    assert!(restarts <= 6.0, "{restarts} restarts in 10 s");
    let status = router.admin(Method::GET, "/modelpod/services/svc", None).1;
    let process = &status["versions"][0]["processes"][0];
    assert!(process["restarts"].as_u64().unwrap() >= 1, "{status}");
    assert!(
        process["failures_in_a_row"].as_u64().unwrap() >= 2,
        "{status}"
    );
    let started = Instant::now();
    let answer = reqwest::blocking::Client::new()
        .post(router.url("/api/v1/service/svc/score?model=mlp"))
        .json(&json!({"data": [[1, 2, 3, 4]]}))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn requests_after_a_replica_is_killed_go_to_the_other_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deploymentconfig.json");
    std::fs::write(
        &config,
        json!({"numReplicas": 2, "maxConcurrentRequestsPerContainer": 4, "autoScaler": {"autoscaleEnabled": false}}).to_string(),
    )
    .unwrap();
    let router = RouterBuilder::new(modelpod())
        .dir(dir.path())
        .admin_key(ADMIN_KEY)
        .args([
            "--service",
            "svc",
            "--auth",
            "none",
            "--dev-test",
            "--model-repository",
        ])
        .arg(fixtures())
        .arg("--deployment-config")
        .arg(&config)
        .args(["--serve-arg=--strict-readiness", "--serve-arg=false"])
        .start();
    let status = router.wait_for(
        Duration::from_secs(60),
        |r| r.admin(Method::GET, "/modelpod/services/svc", None).1,
        |s| s["versions"][0]["ready_replicas"].as_u64() >= Some(2),
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let score = || {
        http.post(router.url("/api/v1/service/svc/score?model=mlp"))
            .json(&json!({"data": [[1, 2, 3, 4]]}))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let mut failed = 0;
    let mut sent = 0;
    for round in 0..3 {
        // Warm pooled connections to both replicas, then kill one outright.
        for _ in 0..20 {
            assert_eq!(score(), 200);
        }
        let replicas = router.admin(Method::GET, "/modelpod/services/svc", None).1;
        let url = replicas["versions"][0]["replicas"][round % 2]["url"]
            .as_str()
            .unwrap_or_else(|| panic!("{status}"))
            .to_string();
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        let pid = serve_pid(port);
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        for _ in 0..20 {
            sent += 1;
            if score() != 200 {
                failed += 1;
            }
        }
        // Both back before the next round.
        router.wait_for(
            Duration::from_secs(60),
            |r| r.admin(Method::GET, "/modelpod/services/svc", None).1,
            |s| s["versions"][0]["ready_replicas"].as_u64() >= Some(2),
        );
    }
    println!("after 3 SIGKILLs of one of 2 replicas: {failed} of {sent} requests failed");
    assert_eq!(failed, 0);
}

#[test]
fn tokens_die_with_their_service_its_auth_mode_and_key_regeneration() {
    let dir = tempfile::tempdir().unwrap();
    let router = RouterBuilder::new(modelpod())
        .dir(dir.path())
        .admin_key(ADMIN_KEY)
        .start();
    let create = |router: &RouterProcess| {
        let (status, body) = router.admin(
            Method::PUT,
            "/modelpod/services/tok",
            Some(json!({"model_repository": fixtures(), "auth": "token",
                "serve_args": ["--strict-readiness", "false"]})),
        );
        assert!(status == 200 || status == 201, "{status}: {body}");
        router.wait_for(
            Duration::from_secs(60),
            |r| r.admin(Method::GET, "/modelpod/services/tok", None).1,
            |s| s["versions"][0]["ready_replicas"].as_u64() >= Some(1),
        );
    };
    let token = |router: &RouterProcess| -> String {
        let (status, body) = router.admin(Method::POST, "/modelpod/services/tok/token", None);
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    };
    let scores = |router: &RouterProcess, token: &str| -> u16 {
        reqwest::blocking::Client::new()
            .get(router.url("/api/v1/service/tok/v2/models/mlp"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    create(&router);
    let first = token(&router);
    assert_eq!(scores(&router, &first), 200);
    // Deleted and created again under the same name.
    assert_eq!(
        router
            .admin(Method::DELETE, "/modelpod/services/tok", None)
            .0,
        200
    );
    create(&router);
    assert_eq!(
        scores(&router, &first),
        401,
        "a token of the deleted service"
    );
    let second = token(&router);
    assert_eq!(scores(&router, &second), 200);
    // Switched to key auth and back.
    for auth in ["key", "token"] {
        let (status, body) = router.admin(
            Method::PATCH,
            "/modelpod/services/tok",
            Some(json!({"auth": auth})),
        );
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        scores(&router, &second),
        401,
        "a token from before the switch"
    );
    let third = token(&router);
    assert_eq!(scores(&router, &third), 200);
    // A regenerated key revokes the tokens too.
    let (status, _) = router.admin(
        Method::POST,
        "/modelpod/services/tok/keys/regenerate",
        Some(json!({"key": "Secondary"})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        scores(&router, &third),
        401,
        "a token from before key regeneration"
    );
    assert_eq!(scores(&router, &token(&router)), 200);
}
