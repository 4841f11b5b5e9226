//! TLS termination at the router, checked with real TLS clients (curl and openssl s_client):
//! TLS 1.2 and 1.3 are served, TLS 1.1 is refused at the handshake, and the plain-HTTP port
//! only redirects.

use modelpod_tests::process::{RouterBuilder, free_port};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI.
fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=modelpod-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // A server certificate, not a CA: WebPKI clients (rustls) refuse a CA as a leaf.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command");
    assert!(made.success());
    (cert.display().to_string(), key.display().to_string())
}

fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("the curl command");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Runs `openssl s_client` with one protocol version; returns whether the handshake finished
/// and what it printed.
fn handshake(port: u16, cafile: &str, version: &str) -> (bool, String) {
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
        ])
        // OpenSSL 3 disables TLS 1.1 itself at its default security level: lower it, so that
        // a refusal can only come from the server.
        .args([
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-CAfile",
            cafile,
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("the openssl command");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (
        output.status.success() && text.contains("Verify return code: 0"),
        text,
    )
}

#[test]
fn https_with_tls_1_2_and_1_3_only_and_a_redirecting_http_port() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let (port, redirect_port) = (free_port(), free_port());
    let models = modelpod_tests::slow_fixtures();
    let _router = RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .dir(dir.path())
        .port(port)
        .admin_key("tls-admin")
        .args(["--service", "svc", "--auth", "none"])
        .args(["--http-redirect-port", &redirect_port.to_string()])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .arg("--model-repository")
        .arg(&models)
        .start();
    let url = format!("https://127.0.0.1:{port}");
    let started = Instant::now();
    while !curl(&["--cacert", &cert, &format!("{url}/")]).0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the router never served HTTPS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, body) = curl(&["--cacert", &cert, &format!("{url}/")]);
    assert!(ok && body == "Healthy", "{body}");
    // The scoring URI over HTTPS, through to a replica once it is ready.
    let started = Instant::now();
    loop {
        let (ok, body) = curl(&[
            "--cacert",
            &cert,
            "-H",
            "Content-Type: application/json",
            "--data",
            "{}",
            &format!("{url}/api/v1/service/svc/v2/models/slow/infer"),
        ]);
        if ok && body.contains("inputs") {
            break; // the replica's own 400 about the empty request: it came through
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    for version in ["-tls1_2", "-tls1_3"] {
        let (ok, text) = handshake(port, &cert, version);
        assert!(ok, "{version} refused:\n{text}");
    }
    let (ok, text) = handshake(port, &cert, "-tls1_1");
    assert!(!ok, "TLS 1.1 was accepted:\n{text}");
    // rustls answers a 1.1-only hello with an alert; the same client gets 1.2 above.
    assert!(
        text.contains("alert protocol version") || text.contains("alert handshake failure"),
        "{text}"
    );
    // The management client over HTTPS: it trusts the self-signed certificate only when told.
    let manage = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_modelpod"))
            .args([
                "service",
                "list",
                "--admin-key",
                "tls-admin",
                "--router",
                &url,
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let listed = manage(&["--ca-cert", &cert]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"svc\""));
    let untrusted = manage(&[]);
    assert!(
        !untrusted.status.success(),
        "a self-signed certificate was trusted"
    );

    // Plain HTTP on the TLS port is not answered as HTTP.
    assert!(!curl(&[&format!("http://127.0.0.1:{port}/")]).0);

    // The plain-HTTP port answers every path with a permanent redirect to the same path.
    let (ok, headers) = curl(&[
        "-o",
        "/dev/null",
        "-D",
        "-",
        &format!("http://127.0.0.1:{redirect_port}/api/v1/service/svc/score?x=1"),
    ]);
    assert!(ok, "{headers}");
    assert!(headers.starts_with("HTTP/1.1 308"), "{headers}");
    assert!(
        headers.to_ascii_lowercase().contains(&format!(
            "location: https://127.0.0.1:{port}/api/v1/service/svc/score?x=1"
        )),
        "{headers}"
    );
    // Never to the host the caller names: that would be an open redirect.
    let (ok, headers) = curl(&[
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        "Host: evil.example",
        &format!("http://127.0.0.1:{redirect_port}/a"),
    ]);
    assert!(ok, "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains(&format!("location: https://127.0.0.1:{port}/a")),
        "{headers}"
    );
}

#[test]
fn a_bad_certificate_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_modelpod"))
        .args([
            "route",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model-repository",
            "x",
        ])
        .arg("--tls-cert")
        .arg(&bogus)
        .arg("--tls-key")
        .arg(&bogus)
        .arg("--state-file")
        .arg(dir.path().join("router-state.json"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TLS certificate") && stderr.contains("bogus.pem"),
        "{stderr}"
    );
}

/// The router's gRPC listener over TLS with the same certificate: tonic's client and
/// `tritonclient.grpc` (`ssl=True`) verify it and call through; a plaintext client gets no
/// answer.
#[test]
fn grpc_through_the_router_is_served_over_tls() {
    use modelpod_proto::GrpcInferenceServiceClient;
    use modelpod_proto::inference::ServerReadyRequest;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let grpc_port = free_port();
    let _router = RouterBuilder::new(env!("CARGO_BIN_EXE_modelpod"))
        .dir(dir.path())
        .admin_key("tls-admin")
        .args(["--service", "svc", "--auth", "none"])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .args(["--grpc-port", &grpc_port.to_string()])
        // The fixtures hold models that fail to load on purpose.
        .args(["--serve-arg", "--strict-readiness", "--serve-arg", "false"])
        .arg("--model-repository")
        .arg(modelpod_tests::fixtures())
        .start();
    let pem = std::fs::read_to_string(&cert).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{grpc_port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("a TLS connection");
        let mut client = GrpcInferenceServiceClient::new(channel);
        let started = Instant::now();
        loop {
            let mut request = tonic::Request::new(ServerReadyRequest {});
            request
                .metadata_mut()
                .insert("modelpod-service", "svc".parse().unwrap());
            match client.server_ready(request).await {
                Ok(answer) if answer.get_ref().ready => break,
                other => assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "never ready: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut plain =
            GrpcInferenceServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
                .await
                .unwrap();
        let mut request = tonic::Request::new(ServerReadyRequest {});
        request
            .metadata_mut()
            .insert("modelpod-service", "svc".parse().unwrap());
        assert!(
            plain.server_ready(request).await.is_err(),
            "plaintext on the TLS port"
        );
    });
    if let Some(python) = modelpod_tests::venv_program("python") {
        let script = format!(
            "import tritonclient.grpc as g\n\
             c = g.InferenceServerClient('localhost:{grpc_port}', ssl=True, root_certificates={cert:?})\n\
             assert c.is_server_ready(headers={{'modelpod-service': 'svc'}})\n\
             m = c.get_model_metadata('mlp', headers={{'modelpod-service': 'svc'}})\n\
             assert m.name == 'mlp', m\n\
             print('tls ok')\n"
        );
        let output = Command::new(python).args(["-c", &script]).output().unwrap();
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("tls ok"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
