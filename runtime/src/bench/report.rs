//! The sweep's results as a terminal table, JSON and Markdown.

use super::{BenchArgs, PointResult};
use serde_json::json;

fn level(r: &PointResult) -> String {
    match (r.concurrency, r.rate) {
        (Some(c), _) => format!("c={c}"),
        (_, Some(rate)) => format!("{rate}/s"),
        _ => "-".into(),
    }
}

fn errors(r: &PointResult) -> String {
    let mut parts: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    if r.client_dropped > 0 {
        parts.push(format!("dropped:{}", r.client_dropped));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(" ")
    }
}

fn server(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0}"))
}

const HEADERS: [&str; 11] = [
    "load",
    "req/s",
    "rows/s",
    "p50 µs",
    "p90 µs",
    "p99 µs",
    "p99.9 µs",
    "max µs",
    "errors",
    "srv queue µs",
    "srv compute µs",
];

fn rows(results: &[PointResult]) -> Vec<[String; 12]> {
    results
        .iter()
        .map(|r| {
            [
                level(r),
                r.batch.to_string(),
                format!("{:.1}", r.requests_per_s),
                format!("{:.1}", r.rows_per_s),
                r.p50_us.to_string(),
                r.p90_us.to_string(),
                r.p99_us.to_string(),
                r.p999_us.to_string(),
                r.max_us.to_string(),
                errors(r),
                server(r.server_queue_mean_us),
                server(r.server_compute_mean_us),
            ]
        })
        .collect()
}

pub fn table(results: &[PointResult]) -> String {
    let body = rows(results);
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|i| {
            body.iter()
                .map(|r| r[i].chars().count())
                .chain([HEADERS[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}", w = *w))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = vec![line(HEADERS.to_vec())];
    out.extend(
        body.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

pub fn markdown(results: &[PointResult]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADERS.join(" | "),
        "---|".repeat(HEADERS.len())
    );
    for r in rows(results) {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

pub fn json(args: &BenchArgs, target: &str, results: &[PointResult]) -> String {
    serde_json::to_string_pretty(&json!({
        "target": target,
        "model": args.model,
        "protocol": if args.in_process { None } else { Some(args.protocol) },
        "warmup_s": args.warmup.as_secs_f64(),
        "points": results,
    }))
    .expect("serialisable")
}
