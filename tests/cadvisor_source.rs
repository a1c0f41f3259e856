//! The cAdvisor source against the fake cAdvisor over real HTTP on loopback.

use std::time::{Duration, Instant};

use hatune::source::cadvisor::{
    Ask, Client, ContainerReading, HostError, HostReading, NoReading, Utilisation, Window,
};
use hatune::testkit::cadvisor::{
    unix_now, Behaviour, FakeCadvisor, FakeContainer, DECADES_AHEAD_SECS, SAMPLES, SIDECAR_ALIAS,
};

const MINUTE: Window = Window::Span(Duration::from_secs(60));

fn client() -> Client {
    Client::new(Duration::from_secs(5))
}

fn container<'a>(host: &'a HostReading, alias: &str) -> &'a ContainerReading {
    host.containers
        .iter()
        .find(|c| c.aliases.first().map(String::as_str) == Some(alias))
        .unwrap_or_else(|| panic!("no container {alias} in {host:#?}"))
}

fn reading<'a>(host: &'a HostReading, alias: &str) -> &'a Utilisation {
    let c = container(host, alias);
    c.reading
        .as_ref()
        .unwrap_or_else(|e| panic!("{alias}: no reading: {e}"))
}

#[tokio::test]
async fn reading_matches_configured_cores() {
    let fake = FakeCadvisor::start(
        4,
        vec![
            FakeContainer::new("web1", 1.0),
            FakeContainer::new("web2", 3.0),
            FakeContainer::new("idle", 0.0),
        ],
    )
    .await
    .unwrap();
    let host = client().poll(&fake.url(), MINUTE).await.unwrap();
    assert_eq!(host.host, fake.url());
    assert_eq!(host.num_cores, 4);
    assert_eq!(
        host.containers.len(),
        4,
        "3 apps and the cadvisor container"
    );

    let web1 = reading(&host, "web1");
    assert!((web1.cores_used - 1.0).abs() < 0.01, "{web1:?}");
    assert!((web1.cpu - 0.25).abs() < 0.005, "{web1:?}");
    assert_eq!(web1.capacity_cores, 4.0);
    // hatune asks for 62 samples, which reach past the minute (they are about 1 s apart):
    // the span starts at the newest sample at or before it, so it covers the whole minute.
    let span_s = (web1.to - web1.from) as f64 / 1e9;
    assert!((60.0..61.5).contains(&span_s), "{span_s}");
    assert_eq!(
        fake.last_docker_request().and_then(|r| r.num_stats),
        Some(62)
    );

    let web2 = reading(&host, "web2");
    assert!((web2.cpu - 0.75).abs() < 0.005, "{web2:?}");
    assert_eq!(reading(&host, "idle").cpu, 0.0);
    assert!(reading(&host, SIDECAR_ALIAS).cpu < 0.05);

    // Docker aliases are [name, full id], and the cgroup name holds the id.
    let c = container(&host, "web1");
    assert_eq!(c.aliases.len(), 2);
    assert_eq!(c.name, format!("/docker/{}", c.aliases[1]));
}

#[tokio::test]
async fn quota_is_the_capacity() {
    let fake = FakeCadvisor::start(
        8,
        vec![
            FakeContainer::new("capped", 1.0).with_quota(2.0),
            FakeContainer::new("free", 1.0),
        ],
    )
    .await
    .unwrap();
    let host = client().poll(&fake.url(), MINUTE).await.unwrap();
    let capped = reading(&host, "capped");
    assert_eq!(capped.capacity_cores, 2.0);
    assert!((capped.cpu - 0.5).abs() < 0.005, "{capped:?}");
    let free = reading(&host, "free");
    assert_eq!(free.capacity_cores, 8.0);
    assert!((free.cpu - 0.125).abs() < 0.005, "{free:?}");
}

#[tokio::test]
async fn rate_change_shows_in_a_short_window() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 0.5)])
        .await
        .unwrap();
    let client = client();
    let changed_at = unix_now();
    fake.set_cores_used("web1", 1.5);
    // Wait until a grid sample newer than the change can start a short window.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let host = client
            .poll(&fake.url(), Window::Span(Duration::from_millis(300)))
            .await
            .unwrap();
        let r = reading(&host, "web1").clone();
        if r.from >= changed_at {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no sample after the change: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!((after.cores_used - 1.5).abs() < 0.01, "{after:?}");
    // Over the minute, the old and new rates mix: the counter grew continuously.
    let host = client.poll(&fake.url(), MINUTE).await.unwrap();
    let minute = reading(&host, "web1");
    assert!(
        minute.cores_used > 0.5 && minute.cores_used < 1.5,
        "{minute:?}"
    );
}

#[tokio::test]
async fn since_window_reads_from_the_previous_newest_sample() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let client = client();
    let first = client.poll(&fake.url(), MINUTE).await.unwrap();
    let prev_to = reading(&first, "web1").to;
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = loop {
        let host = client
            .poll(&fake.url(), Window::Since(prev_to))
            .await
            .unwrap();
        match &container(&host, "web1").reading {
            Ok(r) if r.to > prev_to => break r.clone(),
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Starts at the newest sample at or before the previous one: at most about one interval back.
    assert!(
        next.from <= prev_to && prev_to - next.from < 1_200_000_000,
        "{next:?}"
    );
    assert!((next.cores_used - 1.0).abs() < 0.01, "{next:?}");
}

#[tokio::test]
async fn hanging_host_times_out_while_others_succeed() {
    let fast = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let hung = FakeCadvisor::start(2, vec![FakeContainer::new("web2", 1.0)])
        .await
        .unwrap();
    hung.set_behaviour(Behaviour::Hang);
    let timeout = Duration::from_millis(500);
    let client = Client::new(timeout);
    let hosts = vec![hung.url(), fast.url(), format!("{}/", fast.url())];
    let results = client.poll_all(&hosts, |_| MINUTE).await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], Err(HostError::Timeout(timeout)));
    // Results come in the order of `hosts`, the trailing slash is stripped.
    for (r, url) in results[1..].iter().zip(&hosts[1..]) {
        let host = r.as_ref().unwrap();
        assert_eq!(&host.host, url);
        assert!((reading(host, "web1").cpu - 0.5).abs() < 0.005);
    }
    assert!(hung.requests() >= 1, "the hung host was asked");
}

#[tokio::test]
async fn window_is_chosen_per_host() {
    let a = FakeCadvisor::start(2, vec![FakeContainer::new("a", 1.0)])
        .await
        .unwrap();
    let b = FakeCadvisor::start(2, vec![FakeContainer::new("b", 1.0)])
        .await
        .unwrap();
    let (a_url, b_url) = (a.url(), b.url());
    let results = client()
        .poll_all(&[a_url.clone(), b_url], |h| {
            if h == a_url {
                Window::Span(Duration::from_secs(10))
            } else {
                MINUTE
            }
        })
        .await;
    let span = |r: &Result<HostReading, HostError>, alias| {
        let u = reading(r.as_ref().unwrap(), alias);
        (u.to - u.from) as f64 / 1e9
    };
    assert!(span(&results[0], "a") < 12.0);
    assert!(span(&results[1], "b") > 57.0);
}

#[tokio::test]
async fn garbage_is_garbled() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    fake.set_behaviour(Behaviour::Garbage);
    match client().poll(&fake.url(), MINUTE).await {
        Err(HostError::Garbled { url, .. }) => assert!(url.starts_with(&fake.url())),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn empty_stats_are_too_few_samples() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    fake.set_behaviour(Behaviour::EmptyStats);
    let host = client().poll(&fake.url(), MINUTE).await.unwrap();
    assert_eq!(host.containers.len(), 2);
    for c in &host.containers {
        assert_eq!(c.reading, Err(NoReading::TooFewSamples), "{}", c.name);
    }
}

#[tokio::test]
async fn counter_reset_is_per_container() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    fake.set_behaviour(Behaviour::CounterReset);
    let host = client().poll(&fake.url(), MINUTE).await.unwrap();
    assert_eq!(
        container(&host, "web1").reading,
        Err(NoReading::CounterReset)
    );
    // The other container on the same host still has a reading.
    assert!(container(&host, SIDECAR_ALIAS).reading.is_ok());
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = client()
        .poll(&format!("http://127.0.0.1:{port}"), MINUTE)
        .await;
    assert!(matches!(r, Err(HostError::Unreachable(_))), "{r:?}");
}

#[tokio::test]
async fn stopped_fake_is_unreachable() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let client = client();
    client.poll(&fake.url(), MINUTE).await.unwrap();
    fake.shutdown();
    // The listener closes asynchronously: wait for the refusal rather than sleeping.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.poll(&fake.url(), MINUTE).await {
            Err(HostError::Unreachable(_)) => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn error_status_is_reported() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    fake.set_behaviour(Behaviour::Status(503));
    match client().poll(&fake.url(), MINUTE).await {
        Err(HostError::Status { status, url }) => {
            assert_eq!(status, 503);
            assert!(url.starts_with(&fake.url()), "{url}");
        }
        other => panic!("{other:?}"),
    }
}

/// A host that redirects to another host is not followed there: its poll fails, naming the
/// redirect and where it pointed, and the other host is never asked on its behalf.
#[tokio::test]
async fn a_redirect_is_the_hosts_failure_not_followed() {
    let healthy = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let redirector = FakeCadvisor::start(2, vec![]).await.unwrap();
    redirector.set_behaviour(Behaviour::RedirectTo(healthy.addr()));
    let results = client()
        .poll_all(&[redirector.url(), healthy.url()], |_| MINUTE)
        .await;
    match &results[0] {
        Err(
            e @ HostError::Redirect {
                url,
                status,
                location,
            },
        ) => {
            assert_eq!(*status, 301);
            assert!(url.starts_with(&redirector.url()), "{url}");
            let location = location.as_deref().unwrap_or_default();
            assert!(location.starts_with(&healthy.url()), "{location}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("HTTP status 301 from {}", redirector.url()))
                    && text.contains("(redirects are not followed; it points to http://"),
                "{text}"
            );
            assert_eq!(e.kind(), "redirect");
        }
        other => panic!("{other:?}"),
    }
    assert!(redirector.requests() >= 1);
    // Only its own poll: `/machine` and `/docker/` once each.
    assert_eq!(healthy.requests(), 2, "the redirect was followed");
    assert!(results[1].is_ok());
}

const MIB: usize = 1 << 20;

/// A valid reply larger than `max_reply` that says so in its `Content-Length` is refused
/// before any of it is read; the host beside it, and the same reply under the default cap,
/// are read as usual.
#[tokio::test]
async fn a_reply_announced_over_max_reply_is_refused_unread() {
    let big = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    big.set_behaviour(Behaviour::Oversized {
        bytes: 2 * MIB,
        chunked: false,
    });
    let small = FakeCadvisor::start(2, vec![FakeContainer::new("web2", 1.0)])
        .await
        .unwrap();
    let capped = client().with_max_reply(MIB as u64);
    let results = capped.poll_all(&[big.url(), small.url()], |_| MINUTE).await;
    let e = results[0].as_ref().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "reply from {}/api/v1.3/docker/ is larger than max_reply (1MiB): its Content-Length \
             is 2097152 bytes; not read",
            big.url()
        )
    );
    assert_eq!(e.kind(), "too_large");
    assert!((reading(results[1].as_ref().unwrap(), "web2").cpu - 0.5).abs() < 0.005);

    // The same reply is valid: under the default 32 MiB it is read and parsed.
    let host = client().poll(&big.url(), MINUTE).await.unwrap();
    assert!((reading(&host, "web1").cpu - 0.5).abs() < 0.005);
}

/// A reply without a `Content-Length` (chunked) is counted as it arrives and dropped once it
/// passes `max_reply`: of a 64 MiB reply, hatune reads 1 MiB and the sender gets no further
/// than what the sockets' buffers hold. A chunked reply under the cap is read as usual.
#[tokio::test]
async fn a_chunked_reply_is_read_no_further_than_max_reply() {
    let endless = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    endless.set_behaviour(Behaviour::Oversized {
        bytes: 64 * MIB,
        chunked: true,
    });
    let capped = client().with_max_reply(MIB as u64);
    let e = capped.poll(&endless.url(), MINUTE).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "reply from {}/api/v1.3/docker/ is larger than max_reply (1MiB): more than 1048576 \
             bytes arrived (no Content-Length); the rest was not read",
            endless.url()
        )
    );
    let sent = endless.bytes_sent();
    assert!(
        sent < 16 * MIB as u64,
        "the whole reply was read: {sent} bytes sent"
    );

    let chunked = FakeCadvisor::start(2, vec![FakeContainer::new("web2", 1.0)])
        .await
        .unwrap();
    chunked.set_behaviour(Behaviour::Oversized {
        bytes: MIB / 2,
        chunked: true,
    });
    let host = capped.poll(&chunked.url(), MINUTE).await.unwrap();
    assert!((reading(&host, "web2").cpu - 0.5).abs() < 0.005);
}

#[tokio::test]
async fn machine_is_fetched_once_per_host_until_a_failure() {
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let client = client();
    for _ in 0..2 {
        let host = client.poll(&fake.url(), MINUTE).await.unwrap();
        assert_eq!(host.num_cores, 2);
    }
    assert_eq!(fake.machine_requests(), 1);
    assert_eq!(fake.docker_requests(), 2);
    assert_eq!(fake.requests(), 3);

    // A failed poll forgets the host's core count: it may have been replaced by another machine.
    fake.set_behaviour(Behaviour::Status(500));
    assert!(client.poll(&fake.url(), MINUTE).await.is_err());
    fake.set_behaviour(Behaviour::Normal);
    let before = fake.machine_requests();
    client.poll(&fake.url(), MINUTE).await.unwrap();
    assert_eq!(fake.machine_requests(), before + 1);
}

#[tokio::test]
async fn samples_look_like_cadvisor() {
    // The fake's reply is what the parser sees from a real host: 60 samples about 1 s apart.
    let fake = FakeCadvisor::start(2, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let body = reqwest::get(format!("{}/api/v1.3/docker/", fake.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let containers = hatune::source::cadvisor::parse_containers(&body).unwrap();
    assert_eq!(containers.len(), 2);
    for c in &containers {
        assert_eq!(c.samples.len(), SAMPLES);
        let ts: Vec<_> = c.samples.iter().map(|s| s.timestamp.unwrap()).collect();
        assert!(ts
            .windows(2)
            .all(|w| w[1] > w[0] && w[1] - w[0] < 1_300_000_000));
    }
    let machine = reqwest::get(format!("{}/api/v1.3/machine", fake.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hatune::source::cadvisor::parse_num_cores(&machine), Ok(2));
}

#[tokio::test]
async fn hosts_are_polled_concurrently() {
    // 40 slow hosts: one after another they would take at least 40 × 300 ms = 12 s.
    let mut fakes = Vec::new();
    for i in 0..40 {
        let fake = FakeCadvisor::start(2, vec![FakeContainer::new(format!("web{i}"), 1.0)])
            .await
            .unwrap();
        fake.set_latency(Duration::from_millis(300));
        fakes.push(fake);
    }
    let hosts: Vec<String> = fakes.iter().map(FakeCadvisor::url).collect();
    let started = Instant::now();
    let results = client().poll_all(&hosts, |_| MINUTE).await;
    let elapsed = started.elapsed();
    for (i, r) in results.iter().enumerate() {
        let host = r.as_ref().unwrap();
        assert_eq!(host.host, hosts[i]);
        assert!((reading(host, &format!("web{i}")).cpu - 0.5).abs() < 0.005);
    }
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert!(fakes.iter().all(|f| f.requests() == 2));
}

/// One sample dated 1970-01-01 first in each app's list: ignored, the reading is over the real
/// samples (about a minute of them), not a window of decades at 0%.
#[tokio::test]
async fn a_sample_from_1970_does_not_stretch_the_window() {
    let fake = FakeCadvisor::start(4, vec![FakeContainer::new("web1", 2.0)])
        .await
        .unwrap();
    fake.set_behaviour(Behaviour::AncientFirstSample);
    let host = client().poll(&fake.url(), MINUTE).await.unwrap();
    let web1 = reading(&host, "web1");
    assert!((web1.cores_used - 2.0).abs() < 0.02, "{web1:?}");
    let span_s = (web1.to - web1.from) as f64 / 1e9;
    assert!((57.0..61.0).contains(&span_s), "{span_s}");
}

fn source_config(url: &str) -> hatune::config::Config {
    hatune::config::Config::parse(&format!(
        r#"{{"haproxy": "/s", "cadvisor": ["{url}"], "backends": [{{"name": "app", "pattern": "web"}}]}}"#
    ))
    .unwrap()
}

/// The daemon's source: one poll where the host's samples are dated in 2100 (its clock was
/// off), then normal samples again. The poll from the future is no reading, with the reason,
/// and the next window is not anchored on it: the host reads again at once.
#[tokio::test]
async fn a_poll_from_the_future_does_not_anchor_the_next_window() {
    use hatune::source::Source;
    let fake = FakeCadvisor::start(4, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let mut source = hatune::source::cadvisor::CadvisorSource::new(&source_config(&fake.url()));
    let polls = source.poll().await;
    let first = polls[0].as_ref().unwrap();
    assert!(reading(first, "web1").cores_used > 0.9);

    fake.set_behaviour(Behaviour::ClockAhead(DECADES_AHEAD_SECS));
    let polls = source.poll().await;
    let web1 = container(polls[0].as_ref().unwrap(), "web1");
    match &web1.reading {
        Err(NoReading::AheadOfClock { samples, by_secs }) => {
            assert_eq!(*samples, 1, "a lean poll: only the newest sample");
            assert!(*by_secs > 70 * 365 * 86_400, "{by_secs}");
        }
        other => panic!("{other:?}"),
    }

    fake.set_behaviour(Behaviour::Normal);
    for _ in 0..3 {
        let polls = source.poll().await;
        let host = polls[0].as_ref().unwrap();
        let web1 = reading(host, "web1");
        assert!((web1.cores_used - 1.0).abs() < 0.05, "{web1:?}");
    }
}

/// A host whose clock went back (its samples now all older than the last poll's newest): that
/// poll says so, and the next one reads the configured span again instead of never reading.
#[tokio::test]
async fn a_host_whose_clock_went_back_reads_again_at_the_next_poll() {
    use hatune::source::Source;
    let fake = FakeCadvisor::start(4, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    // Two minutes ahead (within what hatune believes), then set right.
    fake.set_behaviour(Behaviour::ClockAhead(120));
    let mut source = hatune::source::cadvisor::CadvisorSource::new(&source_config(&fake.url()));
    let polls = source.poll().await;
    assert!(reading(polls[0].as_ref().unwrap(), "web1").cores_used > 0.9);
    assert!(matches!(source.ask(&fake.url()), Ask::Newest(_)));
    fake.set_behaviour(Behaviour::Normal);
    let polls = source.poll().await;
    let web1 = container(polls[0].as_ref().unwrap(), "web1");
    assert_eq!(web1.reading, Err(NoReading::ClockWentBack));
    assert!(matches!(
        source.ask(&fake.url()),
        Ask::Window(Window::Span(_))
    ));
    let polls = source.poll().await;
    assert!(reading(polls[0].as_ref().unwrap(), "web1").cores_used > 0.9);
}

/// Labels are kept only when asked for; addresses only when asked for: an IP URL gives its IP
/// without DNS, a host name is resolved (`localhost`), and the name is as the URL writes it.
#[tokio::test]
async fn labels_and_addresses_are_read_when_mapping_needs_them() {
    let fake = FakeCadvisor::start(
        2,
        vec![FakeContainer::new("proj_web_1", 0.5)
            .with_label("com.docker.compose.container-number", "1")
            .with_label("port", "8081")],
    )
    .await
    .unwrap();
    let plain = client().poll(&fake.url(), MINUTE).await.unwrap();
    assert!(container(&plain, "proj_web_1").labels.is_empty());
    assert!(plain.addresses.is_empty(), "{:?}", plain.addresses);
    assert_eq!(plain.name, "127.0.0.1");

    let keep = ["port".to_string(), "absent".to_string()]
        .into_iter()
        .collect();
    let mapping = client().with_mapping(keep, true);
    let host = mapping.poll(&fake.url(), MINUTE).await.unwrap();
    let labels: Vec<(&str, &str)> = container(&host, "proj_web_1")
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("port", "8081")]);
    assert_eq!(
        host.addresses,
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );

    let by_name = format!("http://localhost:{}", fake.addr().port());
    let host = mapping.poll(&by_name, MINUTE).await.unwrap();
    assert_eq!(host.name, "localhost");
    assert!(
        host.addresses.contains(&"127.0.0.1".parse().unwrap()),
        "{:?}",
        host.addresses
    );
}

/// The daemon's source reads a host's window once, then only each container's newest sample
/// (`num_stats` 1, and `/machine` not again), with readings from the last poll's marks: as
/// exact as the window's. A container new since the last poll has its first sample this time,
/// a reading the next. A host that failed is read over the window again when it is back.
#[tokio::test]
async fn the_daemons_source_reads_the_window_once_then_only_the_newest_samples() {
    use hatune::source::Source;
    let fake = FakeCadvisor::start(4, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    let mut source = hatune::source::cadvisor::CadvisorSource::new(&source_config(&fake.url()));
    let asked = || fake.last_docker_request().and_then(|r| r.num_stats);
    let polls = source.poll().await;
    assert!(reading(polls[0].as_ref().unwrap(), "web1").cores_used > 0.9);
    assert_eq!(asked(), Some(62));
    let window_bytes = fake.docker_bytes_sent();

    fake.set_cores_used("web1", 2.0);
    fake.add_container(FakeContainer::new("web2", 0.5));
    let polls = source.poll().await;
    let host = polls[0].as_ref().unwrap();
    assert_eq!(asked(), Some(1));
    let lean_bytes = fake.docker_bytes_sent() - window_bytes;
    assert!(
        lean_bytes * 20 < window_bytes,
        "{lean_bytes} bytes lean, {window_bytes} for the window"
    );
    // From the mark to the newest sample: the time since the last poll, partly at each rate.
    let web1 = reading(host, "web1");
    assert!((0.95..2.05).contains(&web1.cores_used), "{web1:?}");
    assert_eq!(container(host, "web2").reading, Err(NoReading::FirstSample));
    let polls = source.poll().await;
    let host = polls[0].as_ref().unwrap();
    let (web1, web2) = (reading(host, "web1"), reading(host, "web2"));
    assert!((web1.cores_used - 2.0).abs() < 0.01, "{web1:?}");
    assert!((web2.cores_used - 0.5).abs() < 0.01, "{web2:?}");
    assert_eq!(fake.machine_requests(), 1, "the cores are kept");

    fake.set_behaviour(Behaviour::Status(500));
    assert!(source.poll().await[0].is_err());
    fake.set_behaviour(Behaviour::Normal);
    let polls = source.poll().await;
    // The minute before: mostly at 1 core.
    assert!(reading(polls[0].as_ref().unwrap(), "web1").cores_used > 0.9);
    assert_eq!(asked(), Some(62), "back from a failure: the window again");
}

/// What one host's replies weigh, per kind of request (the README's table): the window's
/// 62 samples per container, the lean tick's 1, and `/machine`.
/// `cargo test --test cadvisor_source reply_sizes -- --nocapture` prints them.
#[tokio::test]
async fn reply_sizes_of_a_window_and_of_a_lean_tick() {
    use std::sync::Arc;
    let fake = FakeCadvisor::start(
        4,
        (1..=3)
            .map(|i| FakeContainer::new(format!("web{i}"), 0.5))
            .collect(),
    )
    .await
    .unwrap();
    let client = client();
    client.poll(&fake.url(), MINUTE).await.unwrap();
    let window = fake.docker_bytes_sent();
    let lean_ask = Ask::Newest(Arc::new(Default::default()));
    client.poll_ask(&fake.url(), lean_ask).await.unwrap();
    let lean = fake.docker_bytes_sent() - window;
    let machine = hatune::testkit::cadvisor::machine_body(4).len();
    println!(
        "reply sizes (3 app containers + cAdvisor's own): window (62 samples) {window} bytes, \
         lean (1 sample) {lean} bytes, /machine {machine} bytes"
    );
    assert!(lean * 30 < window, "{lean} vs {window}");
}

/// A host behind a read-only proxy refuses the POST (405): hatune asks it again with a plain
/// GET (cAdvisor's default of 60 samples), at once and from then on, so it keeps its readings;
/// only the lean bytes are lost there.
#[tokio::test]
async fn a_host_that_refuses_post_is_asked_with_get() {
    use hatune::source::Source;
    let fake = FakeCadvisor::start(4, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    fake.set_behaviour(Behaviour::GetOnly);
    let mut source = hatune::source::cadvisor::CadvisorSource::new(&source_config(&fake.url()));
    let polls = source.poll().await;
    assert!(reading(polls[0].as_ref().unwrap(), "web1").cores_used > 0.9);
    assert_eq!(fake.docker_requests(), 2, "the POST, refused, then a GET");
    let last = fake.last_docker_request().unwrap();
    assert_eq!((last.method.as_str(), last.num_stats), ("GET", None));

    let polls = source.poll().await;
    let web1 = reading(polls[0].as_ref().unwrap(), "web1");
    assert!((web1.cores_used - 1.0).abs() < 0.01, "{web1:?}");
    assert_eq!(fake.docker_requests(), 3, "only a GET now");
}

/// A poll that leaves no marks (every container without a usable sample) does not make the
/// next one lean: that one reads the window, so its containers have readings at once rather
/// than a first sample.
#[tokio::test]
async fn a_poll_without_usable_samples_leaves_the_next_reading_the_window() {
    use hatune::source::Source;
    let fake = FakeCadvisor::start(4, vec![FakeContainer::new("web1", 1.0)])
        .await
        .unwrap();
    fake.set_behaviour(Behaviour::EmptyStats);
    let mut source = hatune::source::cadvisor::CadvisorSource::new(&source_config(&fake.url()));
    let polls = source.poll().await;
    let web1 = container(polls[0].as_ref().unwrap(), "web1");
    assert_eq!(web1.reading, Err(NoReading::TooFewSamples));
    fake.set_behaviour(Behaviour::Normal);
    let polls = source.poll().await;
    assert_eq!(
        fake.last_docker_request().and_then(|r| r.num_stats),
        Some(62)
    );
    assert!(reading(polls[0].as_ref().unwrap(), "web1").cores_used > 0.9);
}
