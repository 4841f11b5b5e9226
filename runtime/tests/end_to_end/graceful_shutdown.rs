//! The real `modelpod` binary: it reports its bound address, and on SIGTERM stops accepting
//! while finishing the request it already accepted, then exits cleanly.

use modelpod_scoring::v2::INFERENCE_HEADER_CONTENT_LENGTH;
use modelpod_tests::process::ServeBuilder;
use modelpod_tests::slow_infer_body;
use std::process::Command;
use std::time::{Duration, Instant};

fn slow_request(address: &str, rows: usize, sent: impl FnOnce()) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let (header_len, body) = slow_infer_body(rows);
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/octet-stream\r\n{INFERENCE_HEADER_CONTENT_LENGTH}: {header_len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    sent();
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

#[test]
fn sigterm_finishes_accepted_requests_then_exits() {
    let mut server = ServeBuilder::new(
        env!("CARGO_BIN_EXE_modelpod"),
        &modelpod_tests::slow_fixtures(),
    )
    .args(["--max-concurrent-requests", "4"])
    .start();
    let address = server.address.clone();

    // Find a request size that keeps the worker busy for a while on this machine.
    let mut rows = 64;
    loop {
        let started = Instant::now();
        assert_eq!(slow_request(&address, rows, || ()).unwrap().0, 200);
        if started.elapsed() > Duration::from_millis(400) || rows >= 1 << 15 {
            break;
        }
        rows *= 2;
    }
    let in_flight = {
        let address = address.clone();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            slow_request(&address, rows * 2, move || sent_tx.send(()).unwrap())
        });
        sent_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the request is sent");
        handle
    };
    std::thread::sleep(Duration::from_millis(100));
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let (code, text) = in_flight
        .join()
        .unwrap()
        .expect("the accepted request gets an answer");
    assert_eq!(code, 200, "{}", &text[..text.len().min(300)]);
    let until = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < until,
            "modelpod did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "still accepting after exit"
    );
}

/// Azure's default of one request at a time leaves the batcher nothing to batch: a model that
/// batches is warned about at load, and not once the limit allows batches.
#[test]
fn a_batching_model_behind_one_request_at_a_time_is_warned_about() {
    let fixtures = modelpod_tests::fixtures();
    let warned = |server: &modelpod_tests::process::ServeProcess| {
        server
            .startup_log
            .iter()
            .any(|l| l.contains("no batch can form") && l.contains("mlp"))
    };
    let one_at_a_time = ServeBuilder::new(env!("CARGO_BIN_EXE_modelpod"), &fixtures)
        .args(["--strict-readiness", "false"])
        .start();
    assert!(
        warned(&one_at_a_time),
        "{}",
        one_at_a_time.startup_log.join("\n")
    );
    let batched = ServeBuilder::new(env!("CARGO_BIN_EXE_modelpod"), &fixtures)
        .args([
            "--strict-readiness",
            "false",
            "--max-concurrent-requests",
            "8",
        ])
        .start();
    assert!(!warned(&batched), "{}", batched.startup_log.join("\n"));
}
