//! The real-etcd harness (`testkit::etcd`): keys round-trip through its JSON gateway, a frozen
//! etcd hangs until thawed, a restart keeps the data and the endpoint, and its process is gone,
//! reaped, and its directory removed once the value is dropped. A TLS etcd does the same over
//! https and refuses clients without its client certificate or not trusting its CA.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use hatune::testkit::etcd::{Etcd, EXITS_WITHIN};

const SOON: Duration = Duration::from_secs(20);

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

/// A client giving up after `timeout`, bypassing any proxy.
fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap()
}

/// `GET endpoint/health`: the status and body, or reqwest's error.
async fn health(http: &reqwest::Client, etcd: &Etcd) -> Result<(u16, String), reqwest::Error> {
    let reply = http
        .get(format!("{}/health", etcd.endpoint()))
        .send()
        .await?;
    let status = reply.status().as_u16();
    Ok((status, reply.text().await?))
}

fn is_healthy(answer: &Result<(u16, String), reqwest::Error>) -> bool {
    matches!(answer, Ok((200, body)) if body.replace(' ', "").contains(r#""health":"true""#))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn put_then_get_round_trips_and_an_absent_key_is_none() {
    let etcd = Etcd::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let port = endpoint
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok());
    assert!(port.is_some_and(|p| p > 0), "{endpoint}");
    let pid = etcd.pid().expect("a running etcd has a pid");
    assert!(alive(pid));
    // Ready means healthy, at once.
    assert!(is_healthy(&health(&client(SOON), &etcd).await));

    assert_eq!(etcd.get("/hatune/absent").await.unwrap(), None);
    etcd.put("/hatune/weights/web", "{\"a\": 7}").await.unwrap();
    assert_eq!(
        etcd.get("/hatune/weights/web").await.unwrap().as_deref(),
        Some("{\"a\": 7}")
    );
    // Overwrites, non-ASCII text in key and value, lengths of every base64 padding, the
    // empty value (which the gateway leaves out of its reply).
    etcd.put("/hatune/weights/web", "8").await.unwrap();
    assert_eq!(
        etcd.get("/hatune/weights/web").await.unwrap().as_deref(),
        Some("8")
    );
    for (key, value) in [
        ("k", "é ü ☃"),
        ("ke", "ab"),
        ("key/é", "abc"),
        ("empty", ""),
    ] {
        etcd.put(key, value).await.unwrap();
        assert_eq!(
            etcd.get(key).await.unwrap().as_deref(),
            Some(value),
            "{key}"
        );
    }
    // A prefix of a key is not that key.
    assert_eq!(etcd.get("/hatune/weights").await.unwrap(), None);
}

#[tokio::test]
async fn a_frozen_etcd_hangs_until_thawed() {
    let etcd = Etcd::start().await.unwrap();
    etcd.put("before", "freeze").await.unwrap();
    etcd.freeze().unwrap();
    let impatient = client(Duration::from_millis(500));
    let started = Instant::now();
    match health(&impatient, &etcd).await {
        Err(e) => assert!(e.is_timeout(), "not a timeout: {e:?}"),
        Ok(answer) => panic!("a frozen etcd answered {answer:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(450));
    // Frozen, not gone.
    let pid = etcd.pid().expect("a frozen etcd still has a pid");
    assert!(alive(pid));
    // The harness's own requests hang too (given up on here before its 5 s timeout).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), etcd.get("before"))
            .await
            .is_err(),
        "a frozen etcd answered a get"
    );

    etcd.thaw().unwrap();
    until("a thawed etcd to answer /health", SOON, || async {
        is_healthy(&health(&impatient, &etcd).await).then_some(())
    })
    .await;
    assert_eq!(etcd.get("before").await.unwrap().as_deref(), Some("freeze"));
    assert_eq!(etcd.pid(), Some(pid));
}

#[tokio::test]
async fn restart_keeps_the_data_and_the_endpoint() {
    let mut etcd = Etcd::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let first = etcd.pid().unwrap();
    etcd.put("/hatune/kept", "across restarts").await.unwrap();

    // A restart of a running etcd.
    etcd.restart().await.unwrap();
    assert_eq!(etcd.endpoint(), endpoint);
    let second = etcd.pid().expect("a restarted etcd runs");
    assert!(
        !alive(first) || first == second,
        "the first etcd is still there"
    );
    assert!(is_healthy(&health(&client(SOON), &etcd).await));
    assert_eq!(
        etcd.get("/hatune/kept").await.unwrap().as_deref(),
        Some("across restarts")
    );
    etcd.put("/hatune/second", "run").await.unwrap();

    // Stopped: no pid, no answers, no signals, the data dir kept.
    etcd.stop().await.unwrap();
    assert_eq!(etcd.pid(), None);
    assert!(!alive(second));
    assert!(etcd.get("/hatune/kept").await.is_err());
    assert!(etcd.freeze().is_err());
    assert!(etcd.thaw().is_err());
    assert!(etcd.dir().join("data").is_dir());
    etcd.stop().await.unwrap(); // Stopping a stopped etcd is nothing.

    // A restart of a stopped etcd.
    etcd.restart().await.unwrap();
    assert_eq!(etcd.endpoint(), endpoint);
    assert!(etcd.pid().is_some());
    assert_eq!(
        etcd.get("/hatune/kept").await.unwrap().as_deref(),
        Some("across restarts")
    );
    assert_eq!(
        etcd.get("/hatune/second").await.unwrap().as_deref(),
        Some("run")
    );
}

#[tokio::test]
async fn dropping_stops_the_process_and_removes_the_directory() {
    let etcd = Etcd::start().await.unwrap();
    let pid = etcd.pid().unwrap();
    let dir = etcd.dir().to_path_buf();
    assert!(alive(pid));
    assert!(dir.join("etcd.log").is_file());
    drop(etcd);
    until("the dropped etcd's process to be gone", SOON, || async {
        (!alive(pid)).then_some(())
    })
    .await;
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[tokio::test]
async fn dropping_a_frozen_etcd_thaws_and_stops_it() {
    let etcd = Etcd::start().await.unwrap();
    let pid = etcd.pid().unwrap();
    let dir = etcd.dir().to_path_buf();
    etcd.freeze().unwrap();
    let started = Instant::now();
    drop(etcd);
    // Thawed, it heeds SIGTERM at once; still frozen, it would have waited for SIGKILL.
    assert!(
        started.elapsed() < EXITS_WITHIN,
        "the drop took {:?}",
        started.elapsed()
    );
    until(
        "the dropped frozen etcd's process to be gone",
        SOON,
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[tokio::test]
async fn two_instances_at_once_are_apart() {
    let (a, b) = tokio::join!(Etcd::start(), Etcd::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.pid(), b.pid());
    assert_ne!(a.dir(), b.dir());
    a.put("only", "in a").await.unwrap();
    assert_eq!(a.get("only").await.unwrap().as_deref(), Some("in a"));
    assert_eq!(b.get("only").await.unwrap(), None);
    // Freezing one leaves the other answering.
    a.freeze().unwrap();
    assert!(is_healthy(&health(&client(SOON), &b).await));
    a.thaw().unwrap();
}

#[tokio::test]
async fn a_restart_onto_a_taken_port_fails_and_says_why() {
    let mut etcd = Etcd::start().await.unwrap();
    etcd.put("still", "here").await.unwrap();
    etcd.stop().await.unwrap();
    let port = etcd.endpoint().rsplit(':').next().unwrap().to_string();
    let squatter = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();

    let e = etcd.restart().await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    assert!(e.to_string().contains("address already in use"), "{e}");
    assert_eq!(etcd.pid(), None, "a failed restart leaves etcd stopped");

    drop(squatter);
    etcd.restart().await.unwrap();
    assert_eq!(etcd.get("still").await.unwrap().as_deref(), Some("here"));
}

/// An https client trusting only the CAs in `roots` (PEM files), presenting the certificate and
/// key in `identity` if given.
fn tls_client(roots: &[&Path], identity: Option<&Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(SOON)
        .tls_built_in_root_certs(false);
    for root in roots {
        let pem = std::fs::read(root).unwrap();
        for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = identity {
        let pem = std::fs::read(identity).unwrap();
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// `POST endpoint/v3/kv/range` for the key `k`: the status and body, or reqwest's error.
async fn range(http: &reqwest::Client, etcd: &Etcd) -> Result<(u16, String), reqwest::Error> {
    let reply = http
        .post(format!("{}/v3/kv/range", etcd.endpoint()))
        .header("content-type", "application/json")
        .body(r#"{"key": "aw=="}"#)
        .send()
        .await?;
    let status = reply.status().as_u16();
    Ok((status, reply.text().await?))
}

/// reqwest's error with its causes (where rustls says what it did not like).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn a_plain_etcd_has_no_tls_files() {
    let etcd = Etcd::start().await.unwrap();
    assert!(
        etcd.endpoint().starts_with("http://"),
        "{}",
        etcd.endpoint()
    );
    assert_eq!(etcd.ca_file(), None);
    assert_eq!(etcd.client_cert_file(), None);
    assert_eq!(etcd.other_ca_file(), None);
}

#[tokio::test]
async fn a_tls_etcd_round_trips_keys_over_https() {
    let etcd = Etcd::start_tls().await.unwrap();
    let endpoint = etcd.endpoint();
    let port = endpoint
        .strip_prefix("https://127.0.0.1:")
        .and_then(|p| p.parse::<u16>().ok());
    assert!(port.is_some_and(|p| p > 0), "{endpoint}");
    let (ca, client_cert, other_ca) = (
        etcd.ca_file().expect("a TLS etcd has a CA file"),
        etcd.client_cert_file()
            .expect("a TLS etcd has a client certificate"),
        etcd.other_ca_file().expect("a TLS etcd has another CA"),
    );
    for file in [&ca, &client_cert, &other_ca] {
        assert!(file.is_file(), "{}", file.display());
        assert_eq!(file.parent(), Some(etcd.dir()), "{}", file.display());
    }
    // The client file holds the certificate and its key.
    let client_pem = std::fs::read_to_string(&client_cert).unwrap();
    assert!(client_pem.contains("BEGIN CERTIFICATE"), "{client_pem}");
    assert!(client_pem.contains("PRIVATE KEY"), "{client_pem}");
    assert_ne!(
        std::fs::read(&ca).unwrap(),
        std::fs::read(&other_ca).unwrap()
    );

    // Ready means healthy over https, at once, to a client with the CA and the identity.
    let good = tls_client(&[&ca], Some(&client_cert));
    assert!(is_healthy(&health(&good, &etcd).await));

    assert_eq!(etcd.get("/hatune/absent").await.unwrap(), None);
    etcd.put("/hatune/weights/web", "{\"a\": 7}").await.unwrap();
    assert_eq!(
        etcd.get("/hatune/weights/web").await.unwrap().as_deref(),
        Some("{\"a\": 7}")
    );
    etcd.put("k", "é ü ☃").await.unwrap();
    assert_eq!(etcd.get("k").await.unwrap().as_deref(), Some("é ü ☃"));
    // What the harness wrote, another client with the same identity reads (key "k").
    let (status, body) = range(&good, &etcd).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""kvs""#), "{body}");

    // Plain http to the https port gets no answer of etcd's.
    let plain = format!("http://127.0.0.1:{}/health", port.unwrap());
    if let Ok(reply) = client(SOON).get(&plain).send().await {
        assert!(!reply.status().is_success(), "{plain}: {reply:?}");
    }
}

#[tokio::test]
async fn a_tls_etcd_refuses_a_client_without_a_certificate() {
    let etcd = Etcd::start_tls().await.unwrap();
    etcd.put("k", "v").await.unwrap();
    let anonymous = tls_client(&[&etcd.ca_file().unwrap()], None);
    match range(&anonymous, &etcd).await {
        Err(e) => assert!(!e.is_timeout(), "refused by timing out: {}", chain(&e)),
        Ok((status, body)) => assert!(
            (400..500).contains(&status),
            "answered a client without a certificate: {status} {body}"
        ),
    }
    // Still answering the harness.
    assert_eq!(etcd.get("k").await.unwrap().as_deref(), Some("v"));
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails_the_handshake() {
    let etcd = Etcd::start_tls().await.unwrap();
    let (ca, client_cert, other_ca) = (
        etcd.ca_file().unwrap(),
        etcd.client_cert_file().unwrap(),
        etcd.other_ca_file().unwrap(),
    );
    // With the right identity, so only the root differs.
    let wrong = tls_client(&[&other_ca], Some(&client_cert));
    let e = range(&wrong, &etcd)
        .await
        .expect_err("a client trusting another CA got an answer");
    let text = chain(&e);
    assert!(e.is_connect(), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // A bundle of both CAs (names apart) trusts etcd.
    let bundle = etcd.dir().join("bundle.pem");
    let both = std::fs::read_to_string(&other_ca).unwrap() + &std::fs::read_to_string(&ca).unwrap();
    std::fs::write(&bundle, both).unwrap();
    let (status, body) = range(&tls_client(&[&bundle], Some(&client_cert)), &etcd)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_tls_etcd_restart_keeps_the_data_over_tls() {
    let mut etcd = Etcd::start_tls().await.unwrap();
    let endpoint = etcd.endpoint();
    let ca = etcd.ca_file().unwrap();
    let client_cert = etcd.client_cert_file().unwrap();
    let ca_pem = std::fs::read(&ca).unwrap();
    etcd.put("/hatune/kept", "across restarts").await.unwrap();

    etcd.restart().await.unwrap();
    assert_eq!(etcd.endpoint(), endpoint);
    assert_eq!(etcd.ca_file().as_deref(), Some(ca.as_path()));
    assert_eq!(std::fs::read(&ca).unwrap(), ca_pem, "the CA changed");
    assert_eq!(
        etcd.get("/hatune/kept").await.unwrap().as_deref(),
        Some("across restarts")
    );
    // A client made before the restart trusts the restarted etcd.
    let good = tls_client(&[&ca], Some(&client_cert));
    assert!(is_healthy(&health(&good, &etcd).await));

    etcd.stop().await.unwrap();
    assert!(etcd.get("/hatune/kept").await.is_err());
    etcd.restart().await.unwrap();
    assert_eq!(etcd.endpoint(), endpoint);
    assert_eq!(
        etcd.get("/hatune/kept").await.unwrap().as_deref(),
        Some("across restarts")
    );

    // Frozen and thawed like a plain one.
    etcd.freeze().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), etcd.get("/hatune/kept"))
            .await
            .is_err(),
        "a frozen TLS etcd answered"
    );
    etcd.thaw().unwrap();
    assert_eq!(
        etcd.get("/hatune/kept").await.unwrap().as_deref(),
        Some("across restarts")
    );
}
