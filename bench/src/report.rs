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

/// One constant for both, so the header and every row always have the same columns.
const COLUMNS: usize = 12;

const HEADERS: [&str; COLUMNS] = [
    "load",
    "batch",
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

fn rows(results: &[PointResult]) -> Vec<[String; COLUMNS]> {
    results
        .iter()
        .map(|r| {
            [
                level(r),
                r.batch.to_string(),
                format!("{:.1}", r.requests_per_s),
                format!("{:.1}", r.rows_per_s),
                r.latency.p50_us.to_string(),
                r.latency.p90_us.to_string(),
                r.latency.p99_us.to_string(),
                r.latency.p999_us.to_string(),
                r.latency.max_us.to_string(),
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

/// One point of a comparison: every round on each target, and the averaged ratios.
#[derive(Debug, serde::Serialize)]
pub struct Comparison {
    pub load: String,
    pub first_requests_per_s: f64,
    pub second_requests_per_s: f64,
    /// second / first.
    pub throughput_ratio: f64,
    pub first_p50_us: f64,
    pub second_p50_us: f64,
    pub p50_ratio: f64,
    pub first_p99_us: f64,
    pub second_p99_us: f64,
    pub first: Vec<PointResult>,
    pub second: Vec<PointResult>,
}

impl Comparison {
    pub fn new(
        mode: super::LoadMode,
        first: Vec<PointResult>,
        second: Vec<PointResult>,
    ) -> Comparison {
        let mean = |rs: &[PointResult], f: fn(&PointResult) -> f64| {
            rs.iter().map(f).sum::<f64>() / rs.len().max(1) as f64
        };
        let (a_rps, b_rps) = (
            mean(&first, |r| r.requests_per_s),
            mean(&second, |r| r.requests_per_s),
        );
        let (a_p50, b_p50) = (
            mean(&first, |r| r.latency.p50_us as f64),
            mean(&second, |r| r.latency.p50_us as f64),
        );
        Comparison {
            load: mode.to_string(),
            first_requests_per_s: a_rps,
            second_requests_per_s: b_rps,
            throughput_ratio: b_rps / a_rps,
            first_p50_us: a_p50,
            second_p50_us: b_p50,
            p50_ratio: b_p50 / a_p50,
            first_p99_us: mean(&first, |r| r.latency.p99_us as f64),
            second_p99_us: mean(&second, |r| r.latency.p99_us as f64),
            first,
            second,
        }
    }
}

/// The comparison's columns: a header and one row of cells per load level.
fn comparison_rows(pairs: &[Comparison]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "load",
        "A req/s",
        "B req/s",
        "B/A",
        "A p50 µs",
        "B p50 µs",
        "B − A p50 µs",
        "A p99 µs",
        "B p99 µs",
    ];
    let rows = pairs
        .iter()
        .map(|p| {
            vec![
                p.load.to_string(),
                format!("{:.1}", p.first_requests_per_s),
                format!("{:.1}", p.second_requests_per_s),
                format!("{:.2}", p.throughput_ratio),
                format!("{:.0}", p.first_p50_us),
                format!("{:.0}", p.second_p50_us),
                format!("{:+.0}", p.second_p50_us - p.first_p50_us),
                format!("{:.0}", p.first_p99_us),
                format!("{:.0}", p.second_p99_us),
            ]
        })
        .collect();
    (header, rows)
}

/// The comparison as a Markdown table.
pub fn comparison_markdown(pairs: &[Comparison]) -> String {
    let (header, rows) = comparison_rows(pairs);
    let mut out = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// The comparison for the terminal, right-aligned.
pub fn comparison_table(first: &str, second: &str, pairs: &[Comparison]) -> String {
    let (header, rows) = comparison_rows(pairs);
    let mut out = format!("A = {first}\nB = {second}\n");
    let widths = [18, 10, 10, 6, 9, 9, 12, 9, 9];
    for cells in std::iter::once(header.iter().map(|h| h.to_string()).collect()).chain(rows) {
        let cells: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:>width$}"))
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}
