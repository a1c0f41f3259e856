//! The real-Prometheus harness (`testkit::prometheus`): it scrapes a page served from this test,
//! keeps the page's own sample timestamps (`honor_timestamps`), and its process is gone, reaped,
//! once the value is dropped; with [`Https`] options it scrapes as a kubelet is scraped.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use hatune::testkit::prometheus::{Https, Prometheus};

const METRIC: &str = "hatune_harness_requests_total";
const SOON: Duration = Duration::from_secs(20);

/// Answers every request on `listener` with `page` as Prometheus text, until dropped.
async fn serve(listener: TcpListener, page: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let page = page.clone();
        tokio::spawn(async move {
            let _ = answer(stream, &page, None).await;
        });
    }
}

/// One request: `page`, or `401` when `token` is given and the request's bearer is not it.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    page: &str,
    token: Option<&str>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let allowed = token.map_or(true, |t| {
        head.lines()
            .any(|l| l.trim_end() == format!("authorization: bearer {}", t.to_ascii_lowercase()))
    });
    let (status, body) = if allowed {
        ("200 OK", page)
    } else {
        ("401 Unauthorized", "Unauthorized\n")
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// Polls `check` every 20 ms until it gives `Some`, or panics after `within` naming `what`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        // Polling interval inside a deadline, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one sample of an instant query's vector, if there is exactly one.
fn only_sample(data: &Value) -> Option<Value> {
    match data["result"].as_array() {
        Some(result) if result.len() == 1 => Some(result[0].clone()),
        _ => None,
    }
}

#[tokio::test]
async fn prometheus_scrapes_a_served_page_keeps_its_timestamps_and_stops_when_dropped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    // A sample stamped 10 s ago, to the millisecond: Prometheus must keep that stamp, not the
    // scrape's time.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let stamp_ms = now_ms - 10_000;
    let page = format!(
        "# HELP {METRIC} Requests served.\n# TYPE {METRIC} counter\n{METRIC}{{path=\"/\"}} 42 {stamp_ms}\n"
    );
    let server = tokio::spawn(serve(listener, page));

    let prometheus = Prometheus::start(
        std::slice::from_ref(&target),
        Duration::from_secs(1),
        "/metrics",
    )
    .await
    .unwrap();
    let pid = prometheus.pid();
    let dir = prometheus.dir().to_path_buf();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    if let Err(e) = prometheus.await_targets_up(SOON).await {
        panic!("{e}\nPrometheus's log:\n{}", prometheus.log());
    }

    let sample = until("the served sample in a query", SOON, || async {
        only_sample(&prometheus.query(METRIC).await.ok()?)
    })
    .await;
    assert_eq!(sample["metric"]["job"], "cadvisor", "{sample}");
    assert_eq!(sample["metric"]["instance"], target.as_str(), "{sample}");
    assert_eq!(sample["metric"]["path"], "/", "{sample}");
    assert_eq!(sample["value"][1], "42", "{sample}");
    let stamp = only_sample(
        &prometheus
            .query(&format!("timestamp({METRIC})"))
            .await
            .unwrap(),
    )
    .expect("one timestamp");
    let seconds: f64 = stamp["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(
        (seconds * 1000.0).round() as i64,
        stamp_ms,
        "the sample's own timestamp, not the scrape's: {stamp}"
    );

    drop(prometheus);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "Prometheus (pid {pid}) outlived its handle"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
    server.abort();
}

#[tokio::test]
async fn https_options_scrape_with_the_ca_and_the_bearer_token() {
    // A kubelet-like target: HTTPS with a certificate for 127.0.0.1, a bearer token required.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let page = "# TYPE kubelet_up gauge\nkubelet_up 1\n";
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    let _ = answer(stream, page, Some("s3cret")).await;
                }
            });
        }
    });
    let files = tempfile::tempdir().unwrap();
    let token = files.path().join("token");
    let ca = files.path().join("ca.pem");
    std::fs::write(&token, "s3cret").unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();

    let https = Https {
        credentials_file: Some(token),
        ca_file: Some(ca),
        server_name: None,
    };
    let prometheus = Prometheus::start_with(
        std::slice::from_ref(&target),
        Duration::from_secs(1),
        "/metrics/cadvisor",
        Some(&https),
    )
    .await
    .unwrap();
    if let Err(e) = prometheus.await_targets_up(SOON).await {
        panic!("{e}\nPrometheus's log:\n{}", prometheus.log());
    }
    let sample = until("the kubelet's sample in a query", SOON, || async {
        only_sample(&prometheus.query("kubelet_up").await.ok()?)
    })
    .await;
    assert_eq!(sample["value"][1], "1", "{sample}");
    let up = only_sample(&prometheus.query("up").await.unwrap()).expect("one target");
    assert_eq!(up["metric"]["instance"], target.as_str(), "{up}");
    server.abort();
}

#[tokio::test]
async fn a_test_that_panics_leaves_no_prometheus_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = tokio::spawn(async move {
        let prometheus = Prometheus::start(&[], Duration::from_secs(1), "/metrics")
            .await
            .unwrap();
        tx.send((prometheus.pid(), prometheus.dir().to_path_buf()))
            .unwrap();
        panic!("a failing test (expected: the harness must clean up after it)");
    });
    assert!(test.await.unwrap_err().is_panic());
    let (pid, dir) = rx.recv().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "Prometheus (pid {pid}) outlived the panic"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
