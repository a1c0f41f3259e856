//! The test fakes' Prometheus endpoints, over real sockets: the fake cAdvisor's `/metrics`
//! (HTTP) and the fake kubelet's `/metrics/resource` and `/metrics/cadvisor` (HTTPS, a bearer
//! token), read with hatune's own exposition parser.

use std::time::Duration;

use hatune::source::exposition::{samples, Sample};
use hatune::testkit::cadvisor::{
    other_ca_pem, Behaviour, CpuSeries, FakeCadvisor, FakeContainer, FakeKubelet, KubeletOptions,
    KUBELET_USER, METRICS_CONTENT_TYPE,
};

/// Every line a sample, none an error.
fn read(text: &str) -> Vec<Sample<'_>> {
    samples(text)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{e}:\n{text}"))
}

/// The CPU counter of the container named `name` (summed over its CPUs) and its timestamp.
fn cpu_of(all: &[Sample<'_>], label: &str, value: &str) -> (f64, i64) {
    let series: Vec<&Sample> = all
        .iter()
        .filter(|s| s.name == "container_cpu_usage_seconds_total" && s.label(label) == Some(value))
        .collect();
    assert!(!series.is_empty(), "no CPU series with {label}={value:?}");
    let ts = series[0].timestamp_ms.expect("a timestamp");
    assert!(series.iter().all(|s| s.timestamp_ms == Some(ts)));
    (series.iter().map(|s| s.value).sum(), ts)
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

async fn cadvisor() -> FakeCadvisor {
    FakeCadvisor::start(
        4,
        vec![
            FakeContainer::new("web1", 1.0).with_quota(2.0),
            FakeContainer::new("web2", 0.5).with_label("tier", "front"),
        ],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn cadvisor_serves_prometheus_text_on_metrics() {
    let fake = cadvisor().await;
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", fake.url());
    let (status, ctype, text) = get(&client, &url).await;
    assert_eq!(status, 200);
    assert_eq!(ctype, METRICS_CONTENT_TYPE);
    assert!(ctype.starts_with("text/plain; version=0.0.4"));
    let all = read(&text);
    for alias in ["web1", "web2", "cadvisor"] {
        let cpu: Vec<_> = all
            .iter()
            .filter(|s| {
                s.name == "container_cpu_usage_seconds_total" && s.label("name") == Some(alias)
            })
            .collect();
        assert_eq!(cpu.len(), 4, "{alias}: one series per CPU");
        assert!(cpu[0].label("id").unwrap().starts_with("/docker/"));
        assert_eq!(
            cpu[0].label("container_label_tier"),
            Some(if alias == "web2" { "front" } else { "" })
        );
    }
    assert!(all.iter().any(|s| s.label("id") == Some("/")));
    let cores: Vec<_> = all
        .iter()
        .filter(|s| s.name == "machine_cpu_cores")
        .collect();
    assert_eq!(cores.len(), 1);
    assert_eq!(cores[0].value, 4.0);
    let quota: Vec<_> = all
        .iter()
        .filter(|s| s.name == "container_spec_cpu_quota")
        .collect();
    assert_eq!(quota.len(), 1);
    assert_eq!(
        (quota[0].label("name"), quota[0].value),
        (Some("web1"), 200_000.0)
    );

    assert_eq!(fake.metrics_requests(), 1);
    assert_eq!(fake.requests_for("/metrics"), 1);
    assert_eq!(fake.docker_bytes_sent(), 0);
    let sent = fake.metrics_bytes_sent();
    assert!(
        sent > text.len() as u64 && sent < text.len() as u64 + 200,
        "{sent}"
    );
    assert_eq!(fake.bytes_sent(), sent);
    // HEAD: the head only.
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(fake.metrics_requests(), 2);
    assert!(fake.metrics_bytes_sent() - sent < 200);
    // The JSON API is still there; a kubelet path is not.
    let (status, _, _) = get(&client, &format!("{}/api/v1.3/docker/", fake.url())).await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&client, &format!("{}/metrics/cadvisor", fake.url())).await;
    assert_eq!(status, 404);
    assert_eq!(fake.metrics_requests(), 2);
}

/// `(counter ns, timestamp ns)` of `alias`'s newest JSON sample.
async fn json_newest(client: &reqwest::Client, fake: &FakeCadvisor, alias: &str) -> (f64, f64) {
    let body = client
        .post(format!("{}/api/v1.3/docker/", fake.url()))
        .body(r#"{"num_stats":1}"#)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let parsed = hatune::source::cadvisor::parse_containers(&body).unwrap();
    let c = parsed.iter().find(|c| c.aliases[0] == alias).unwrap();
    let s = c.samples.last().unwrap();
    (s.usage_total.unwrap() as f64, s.timestamp.unwrap() as f64)
}

#[tokio::test]
async fn the_counter_moves_with_set_cores_used_as_the_json_one() {
    let fake = cadvisor().await;
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", fake.url());
    for cores in [3.0, 0.25] {
        fake.set_cores_used("web1", cores);
        // The JSON's newest sample and the scrape: one counter, so the rate between them is
        // the one set (the scrape's sample is at its whole millisecond).
        loop {
            let (json_ns, json_t) = json_newest(&client, &fake, "web1").await;
            let (_, _, text) = get(&client, &url).await;
            let (secs, ts) = cpu_of(&read(&text), "name", "web1");
            let dt = ts as f64 * 1e6 - json_t;
            if dt.abs() < 1e6 {
                continue; // the same millisecond: too close to tell
            }
            let rate = (secs * 1e9 - json_ns) / dt;
            assert!((rate - cores).abs() < 1e-3, "{rate} vs {cores}");
            break;
        }
        // Two scrapes: the same rate.
        let (_, _, first) = get(&client, &url).await;
        let (a, ta) = cpu_of(&read(&first), "name", "web1");
        let (b, tb) = loop {
            let (_, _, text) = get(&client, &url).await;
            let (b, tb) = cpu_of(&read(&text), "name", "web1");
            if tb > ta {
                break (b, tb);
            }
        };
        let rate = (b - a) / ((tb - ta) as f64 / 1e3);
        assert!((rate - cores).abs() < 1e-3, "{rate} vs {cores}");
    }
    // Containers come and go in the text as in the JSON.
    fake.add_container(FakeContainer::new("web3", 1.0));
    assert!(fake.remove_container("web2"));
    let (_, _, text) = get(&client, &url).await;
    let all = read(&text);
    assert!(all.iter().any(|s| s.label("name") == Some("web3")));
    assert!(!all.iter().any(|s| s.label("name") == Some("web2")));
}

#[tokio::test]
async fn cpu_series_and_timestamps_can_be_set() {
    let fake = cadvisor().await;
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", fake.url());
    fake.set_cpu_series(CpuSeries::Total);
    let (_, _, text) = get(&client, &url).await;
    let all = read(&text);
    let cpu: Vec<_> = all
        .iter()
        .filter(|s| s.name == "container_cpu_usage_seconds_total")
        .collect();
    assert!(cpu.iter().all(|s| s.label("cpu") == Some("total")));
    assert_eq!(
        cpu.len(),
        2 + 3,
        "the root, a system cgroup and three containers"
    );
    fake.set_metrics_timestamps(false);
    let (_, _, text) = get(&client, &url).await;
    assert!(read(&text).iter().all(|s| s.timestamp_ms.is_none()));
    fake.set_cpu_series(CpuSeries::PerCpu);
    let (_, _, text) = get(&client, &url).await;
    let all = read(&text);
    assert!(all.iter().any(|s| s.label("cpu") == Some("cpu03")));
}

#[tokio::test]
async fn behaviours_apply_to_metrics() {
    let fake = cadvisor().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!("{}/metrics", fake.url());

    fake.set_behaviour(Behaviour::Status(503));
    let (status, _, _) = get(&client, &url).await;
    assert_eq!(status, 503);

    fake.set_behaviour(Behaviour::Garbage);
    let (status, _, text) = get(&client, &url).await;
    assert_eq!(status, 200);
    assert!(samples(&text).filter(Result::is_err).count() >= 2);

    fake.set_behaviour(Behaviour::EmptyStats);
    let (_, _, text) = get(&client, &url).await;
    let all = read(&text);
    assert!(!all.iter().any(|s| s.name.starts_with("container_cpu_")));
    assert!(all.iter().any(|s| s.name == "machine_cpu_cores"));

    fake.set_behaviour(Behaviour::CounterReset);
    let (_, _, text) = get(&client, &url).await;
    let all = read(&text);
    assert!(cpu_of(&all, "name", "web1").0 < 1.0);
    assert!(cpu_of(&all, "name", "cadvisor").0 > 1.0);

    fake.set_behaviour(Behaviour::ClockAhead(7200));
    let (_, _, text) = get(&client, &url).await;
    let (_, ts) = cpu_of(&read(&text), "name", "web1");
    let now_ms = hatune::testkit::cadvisor::unix_now() as f64 / 1e6;
    assert!(
        (ts as f64 - now_ms - 7.2e6).abs() < 60e3,
        "{ts} vs {now_ms}"
    );

    for chunked in [false, true] {
        fake.set_behaviour(Behaviour::Oversized {
            bytes: 300_000,
            chunked,
        });
        let (status, _, text) = get(&client, &url).await;
        assert_eq!(status, 200);
        assert_eq!(text.len(), 300_000, "chunked: {chunked}");
        assert!(read(&text).iter().any(|s| s.label("name") == Some("web1")));
    }

    fake.set_behaviour(Behaviour::Hang);
    assert!(client.get(&url).send().await.is_err());
    assert_eq!(fake.metrics_requests(), 8);
}

/// A client that trusts only `ca_pem`.
fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap()
}

async fn kubelet(options: KubeletOptions) -> FakeKubelet {
    FakeKubelet::start(
        2,
        vec![
            FakeContainer::new("web1", 1.0),
            FakeContainer::new("web2", 0.5).with_pod("shop", "web-7d9f", "nginx"),
        ],
        options,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_kubelet_wants_its_token() {
    let kubelet = kubelet(KubeletOptions::new("s3cret")).await;
    assert!(kubelet.url().starts_with("https://127.0.0.1:"));
    let client = trusting(&kubelet.ca_pem());
    let url = kubelet.resource_url();
    let ask = |auth: Option<&str>| {
        let mut req = client.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(ask(None).await, (401, "Unauthorized".to_owned()));
    assert_eq!(kubelet.last_authorization(), None);
    assert_eq!(ask(Some("Bearer wrong")).await.0, 401);
    assert_eq!(ask(Some("Basic czNjcmV0")).await.0, 401);
    assert_eq!(ask(Some("Bearer")).await.0, 401);
    let (status, text) = ask(Some("Bearer s3cret")).await;
    assert_eq!(status, 200);
    assert!(!read(&text).is_empty());
    assert_eq!(
        kubelet.last_authorization().as_deref(),
        Some("Bearer s3cret")
    );
    assert_eq!(
        ask(Some("bearer s3cret")).await.0,
        200,
        "the scheme in any case"
    );

    kubelet.set_token("rotated");
    assert_eq!(kubelet.token(), "rotated");
    assert_eq!(ask(Some("Bearer s3cret")).await.0, 401);
    assert_eq!(ask(Some("Bearer rotated")).await.0, 200);
    assert_eq!(
        kubelet.last_authorization().as_deref(),
        Some("Bearer rotated")
    );
    assert_eq!(kubelet.requests_for("/metrics/resource"), 8);
    assert_eq!(kubelet.requests_for("/metrics/cadvisor"), 0);
    assert_eq!(kubelet.metrics_requests(), 8);

    // Through reqwest's own bearer helper, on the other path.
    let resp = client
        .get(kubelet.cadvisor_url())
        .bearer_auth("rotated")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(kubelet.requests_for("/metrics/cadvisor"), 1);
}

#[tokio::test]
async fn the_kubelet_serves_both_shapes() {
    let kubelet = kubelet(KubeletOptions::default()).await;
    let client = trusting(&kubelet.ca_pem());
    let token = kubelet.token();
    let fetch = |url: String| {
        let req = client.get(url).bearer_auth(&token);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, ctype, resp.text().await.unwrap())
        }
    };

    let (status, ctype, resource) = fetch(kubelet.resource_url()).await;
    assert_eq!(status, 200);
    assert_eq!(ctype.as_deref(), Some(METRICS_CONTENT_TYPE));
    let r = read(&resource);
    let (web1, t1) = cpu_of(&r, "pod", "web1");
    assert_eq!(
        r.iter()
            .filter(|s| s.name == "container_cpu_usage_seconds_total")
            .count(),
        3
    );
    let nginx: Vec<_> = r
        .iter()
        .filter(|s| {
            s.name == "container_cpu_usage_seconds_total" && s.label("container") == Some("nginx")
        })
        .collect();
    assert_eq!(nginx[0].label("namespace"), Some("shop"));
    assert_eq!(nginx[0].label("pod"), Some("web-7d9f"));
    assert!(!r.iter().any(|s| s.name == "machine_cpu_cores"));
    assert!(!r
        .iter()
        .any(|s| matches!(s.label("container"), Some("" | "POD"))));
    assert!(r.iter().any(|s| s.name == "scrape_error" && s.value == 0.0));

    let (status, _, cadvisor) = fetch(kubelet.cadvisor_url()).await;
    assert_eq!(status, 200);
    let c = read(&cadvisor);
    let cpu: Vec<_> = c
        .iter()
        .filter(|s| s.name == "container_cpu_usage_seconds_total")
        .collect();
    assert!(cpu.iter().all(|s| s.label("cpu") == Some("total")));
    assert!(cpu.iter().any(|s| s.label("container") == Some("POD")));
    assert!(cpu
        .iter()
        .any(|s| s.label("container") == Some("") && s.label("pod") == Some("web1")));
    let app: Vec<_> = cpu
        .iter()
        .filter(|s| s.label("pod") == Some("web1") && s.label("container") == Some("app"))
        .collect();
    assert_eq!(app.len(), 1);
    assert_eq!(app[0].label("namespace"), Some("default"));
    // Later than the resource scrape, the same counter going on at 1 core.
    let t2 = app[0].timestamp_ms.unwrap();
    assert!(t2 >= t1);
    if t2 > t1 {
        let rate = (app[0].value - web1) / ((t2 - t1) as f64 / 1e3);
        assert!((rate - 1.0).abs() < 1e-3, "{rate}");
    }
    assert!(c
        .iter()
        .any(|s| s.name == "machine_cpu_cores" && s.value == 2.0));
    assert!(cpu
        .iter()
        .any(|s| s.label("container") == Some("cadvisor")
            && s.label("namespace") == Some("kube-system")));

    // cAdvisor's own paths are not the kubelet's.
    for path in ["/metrics", "/api/v1.3/docker/", "/api/v1.3/machine"] {
        let (status, _, _) = fetch(format!("{}{path}", kubelet.url())).await;
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn a_403_names_the_user_as_the_kubelet_does() {
    let kubelet = kubelet(KubeletOptions::new("t")).await;
    let client = trusting(&kubelet.ca_pem());
    kubelet.set_behaviour(Behaviour::Status(403));
    let resp = client
        .get(kubelet.cadvisor_url())
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        resp.text().await.unwrap(),
        format!("Forbidden (user={KUBELET_USER}, verb=get, resource=nodes, subresource=metrics)")
    );
    // Authentication still comes first.
    let resp = client.get(kubelet.cadvisor_url()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn only_a_client_trusting_its_ca_gets_through() {
    let kubelet = kubelet(KubeletOptions::new("t")).await;
    let other = trusting(&other_ca_pem());
    let err = other
        .get(kubelet.resource_url())
        .bearer_auth("t")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // No CA at all.
    let none = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(none.get(kubelet.resource_url()).send().await.is_err());
    // Plain HTTP to the HTTPS port.
    let plain = reqwest::Client::new();
    let http_url = kubelet.resource_url().replacen("https://", "http://", 1);
    assert!(plain
        .get(&http_url)
        .bearer_auth("t")
        .send()
        .await
        .map_or(true, |r| !r.status().is_success()));
    assert_eq!(kubelet.requests(), 0, "no request got through");
    assert!(kubelet.tls_failures() >= 2, "{}", kubelet.tls_failures());

    // Its own CA, under the name `localhost` too.
    let mine = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(kubelet.ca_pem().as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", kubelet.addr())
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/metrics/resource",
        kubelet.addr().port()
    );
    let resp = mine.get(url).bearer_auth("t").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let kubelet = kubelet(KubeletOptions {
        expired_cert: true,
        ..KubeletOptions::new("t")
    })
    .await;
    let client = trusting(&kubelet.ca_pem());
    let err = client
        .get(kubelet.resource_url())
        .bearer_auth("t")
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("expired"),
        "{err:?}"
    );
    assert_eq!(kubelet.requests(), 0);
}

#[tokio::test]
async fn the_kubelet_stops_with_its_last_handle() {
    let kubelet = kubelet(KubeletOptions::new("t")).await;
    let addr = kubelet.addr();
    let client = trusting(&kubelet.ca_pem());
    let copy = kubelet.clone();
    drop(kubelet);
    let resp = client
        .get(copy.resource_url())
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "a clone keeps it running");
    drop(copy);
    // The accept loop sees the stop as soon as it runs again; no timer involved.
    let mut refused = false;
    for _ in 0..10_000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "still listening on {addr}");
}
