//! Parsing throughput (MB/s): cAdvisor `/api/v1.3/docker/` replies and HAProxy `show stat`.
//!
//! `cargo bench --bench parse` (criterion; the `thrpt` line of each group is the figure).
//!
//! Inputs:
//! - `docker/fake-4c-60s`: one fake host's reply (3 app containers + the `cadvisor` one, 60
//!   samples each, the shape of the real v1.2 capture), as `hatune once` parses it per host.
//! - `docker/real-v1.2-datadog`: the real 191 KB capture from a GKE node (shared fixtures),
//!   when `/work/shared` is there.
//! - `show-stat/10000`: a 10,000-server `show stat` built from the rows of the real HAProxy
//!   2.6.12 capture (`tests/fixtures/haproxy/2.6.12/show_stat.csv`), renamed 100 × 100.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use hatune::sink::haproxy::parse_show_stat;
use hatune::source::cadvisor::{parse_containers, utilisation, Window};
use hatune::testkit::cadvisor::{docker_body, unix_now, FakeContainer};

fn fake_docker_body() -> String {
    let containers: Vec<FakeContainer> = (0..3)
        .map(|c| FakeContainer::new(format!("app-00001-{c:02}"), 0.2 + 0.1 * f64::from(c)))
        .collect();
    docker_body(4, &containers, unix_now(), 1)
}

/// 100 backends × 100 servers, each row a real 2.6.12 server row with its names replaced.
pub fn show_stat_10k() -> String {
    let fixture = include_str!("../tests/fixtures/haproxy/2.6.12/show_stat.csv");
    let mut lines = fixture.lines();
    let header = lines.next().expect("header");
    let rows: Vec<&str> = lines.collect();
    let server_row = rows
        .iter()
        .find(|r| r.starts_with("web,web-1,"))
        .expect("a server row");
    let backend_row = rows
        .iter()
        .find(|r| r.starts_with("web,BACKEND,"))
        .expect("a backend row");
    let server_rest = &server_row["web,web-1,".len()..];
    let backend_rest = &backend_row["web,BACKEND,".len()..];
    let mut out = String::with_capacity(10_000 * (server_row.len() + 20));
    out.push_str(header);
    out.push('\n');
    for b in 0..100 {
        for s in 0..100 {
            out.push_str(&format!("be{b:03},be{b:03}-s{s:03},{server_rest}\n"));
        }
        out.push_str(&format!("be{b:03},BACKEND,{backend_rest}\n"));
    }
    out.push('\n');
    out
}

fn shared_fixture(name: &str) -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/cadvisor")
        .join(name);
    std::fs::read(path).ok()
}

fn docker(c: &mut Criterion) {
    let mut g = c.benchmark_group("docker");
    g.measurement_time(Duration::from_secs(5));
    let body = fake_docker_body();
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("fake-4c-60s/parse", |b| {
        b.iter(|| parse_containers(black_box(body.as_bytes())).unwrap())
    });
    let window = Window::Span(Duration::from_secs(60));
    g.bench_function("fake-4c-60s/parse+utilisation", |b| {
        b.iter(|| {
            let cs = parse_containers(black_box(body.as_bytes())).unwrap();
            cs.iter()
                .map(|c| utilisation(c, 4, window).map(|u| u.cpu).unwrap_or(0.0))
                .sum::<f64>()
        })
    });
    if let Some(real) = shared_fixture("v1.2_subcontainers_datadog.json") {
        g.throughput(Throughput::Bytes(real.len() as u64));
        g.bench_function("real-v1.2-datadog/parse", |b| {
            b.iter(|| parse_containers(black_box(&real)).unwrap())
        });
        // The same bytes through serde_json::Value, for comparison with the typed parser.
        g.bench_function("real-v1.2-datadog/serde_json::Value", |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&real)).unwrap())
        });
    }
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("fake-4c-60s/serde_json::Value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body.as_bytes())).unwrap())
    });
    g.finish();
}

fn show_stat(c: &mut Criterion) {
    let mut g = c.benchmark_group("show-stat");
    g.measurement_time(Duration::from_secs(5));
    let text = show_stat_10k();
    assert_eq!(parse_show_stat(&text).unwrap().servers.len(), 10_000);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("10000/parse", |b| {
        b.iter(|| parse_show_stat(black_box(&text)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, docker, show_stat);
criterion_main!(benches);
