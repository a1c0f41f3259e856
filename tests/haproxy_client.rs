//! The runtime API client against a real HAProxy (Debian's 2.6 here), started by the testkit.

use std::time::{Duration, Instant};

use hatune::sink::haproxy::{Address, Client, Error, ServerStat, Stat, WeightChange};
use hatune::testkit::haproxy::{free_port, Haproxy};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A backend of `n` servers `<name>-1..n` pointing at a closed loopback port (no traffic is
/// needed to set weights).
fn backend(name: &str, balance: &str, n: usize, weight: u32) -> String {
    let mut cfg = format!("backend {name}\n    balance {balance}\n");
    for i in 1..=n {
        cfg.push_str(&format!(
            "    server {name}-{i} 127.0.0.1:1 weight {weight}\n"
        ));
    }
    cfg
}

fn change(backend: &str, server: &str, weight: u32) -> WeightChange {
    WeightChange {
        backend: backend.into(),
        server: server.into(),
        weight,
    }
}

fn find<'a>(stat: &'a Stat, backend: &str, server: &str) -> &'a ServerStat {
    stat.servers
        .iter()
        .find(|s| s.backend == backend && s.server == server)
        .unwrap_or_else(|| panic!("{backend}/{server} not in show stat"))
}

fn admin(haproxy: &Haproxy) -> Client {
    Client::new(haproxy.admin_socket(), TIMEOUT)
}

#[tokio::test]
async fn show_stat_sees_every_server_of_a_large_backend() {
    // The 2015 tool read one recv() and saw only ~30 of 50 servers.
    let haproxy = Haproxy::start(&backend("big", "roundrobin", 75, 10)).unwrap();
    for client in [
        admin(&haproxy),
        Client::new(haproxy.tcp_socket().unwrap(), TIMEOUT),
    ] {
        let stat = client.show_stat().await.unwrap();
        let names: Vec<&str> = stat.servers.iter().map(|s| s.server.as_str()).collect();
        assert_eq!(names.len(), 75, "{}", client.address());
        for i in 1..=75 {
            assert!(names.contains(&format!("big-{i}").as_str()), "big-{i}");
        }
        assert!(stat
            .servers
            .iter()
            .all(|s| s.weight == 10 && s.uweight == Some(10)));
        assert_eq!(stat.backends.len(), 1);
        assert_eq!(stat.backends[0].algo.as_deref(), Some("roundrobin"));
    }
}

#[tokio::test]
async fn set_weights_applies_over_unix_and_tcp() {
    let haproxy = Haproxy::start(&backend("app", "roundrobin", 4, 100)).unwrap();
    let unix = admin(&haproxy);
    let tcp = Client::new(haproxy.tcp_socket().unwrap(), TIMEOUT);
    unix.check_admin().await.unwrap();
    tcp.check_admin().await.unwrap();

    let outcomes = unix
        .set_weights(&[change("app", "app-1", 0), change("app", "app-2", 256)])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Ok(()), Ok(())]);
    let outcomes = tcp
        .set_weights(&[change("app", "app-3", 7), change("app", "app-4", 42)])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Ok(()), Ok(())]);

    for client in [&unix, &tcp] {
        let stat = client.show_stat().await.unwrap();
        let weights: Vec<u32> = (1..=4)
            .map(|i| find(&stat, "app", &format!("app-{i}")).user_weight())
            .collect();
        assert_eq!(weights, vec![0, 256, 7, 42], "{}", client.address());
    }
    // `get weight` agrees with show stat's uweight.
    assert_eq!(
        unix.command("get weight app/app-3").await.unwrap(),
        "7 (initial 100)\n\n"
    );
}

#[tokio::test]
async fn refusals_are_reported_against_the_right_server_while_the_rest_apply() {
    let cfg = format!(
        "{}{}",
        backend("app", "roundrobin", 3, 100),
        backend("pinned", "source", 2, 100)
    );
    let haproxy = Haproxy::start(&cfg).unwrap();
    let client = admin(&haproxy);
    let changes = [
        change("app", "app-1", 10),
        change("pinned", "pinned-1", 50), // static algorithm
        change("app", "app-2", 20),
        change("app", "nope", 5),
        change("app", "app-3;set weight app/app-1 1", 1), // never sent
        change("app", "app-3", 300),                      // never sent
        change("nope", "x", 5),
        change("app", "app-3", 30),
    ];
    let outcomes = client.set_weights(&changes).await.unwrap();
    assert_eq!(outcomes.len(), changes.len());
    assert_eq!(outcomes[0], Ok(()));
    assert_eq!(
        outcomes[1],
        Err(
            "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'."
                .to_string()
        )
    );
    assert_eq!(outcomes[2], Ok(()));
    assert_eq!(outcomes[3], Err("No such server.".to_string()));
    assert!(outcomes[4].as_ref().unwrap_err().contains("not sent"));
    assert!(outcomes[5].as_ref().unwrap_err().contains("0..=256"));
    assert_eq!(outcomes[6], Err("No such backend.".to_string()));
    assert_eq!(outcomes[7], Ok(()));

    let stat = client.show_stat().await.unwrap();
    assert_eq!(find(&stat, "app", "app-1").user_weight(), 10);
    assert_eq!(find(&stat, "app", "app-2").user_weight(), 20);
    assert_eq!(find(&stat, "app", "app-3").user_weight(), 30);
    assert_eq!(find(&stat, "pinned", "pinned-1").user_weight(), 100);
    let pinned = stat.backends.iter().find(|b| b.name == "pinned").unwrap();
    assert_eq!(pinned.algo.as_deref(), Some("source"));
}

#[tokio::test]
async fn a_user_level_socket_is_permission_denied() {
    let haproxy = Haproxy::start(&backend("app", "roundrobin", 2, 100)).unwrap();
    let user = Client::new(haproxy.user_socket(), TIMEOUT);
    // Reading still works at user level.
    assert_eq!(user.show_stat().await.unwrap().servers.len(), 2);

    match user.check_admin().await {
        Err(Error::PermissionDenied { reply, .. }) => assert!(reply.contains("user"), "{reply}"),
        other => panic!("check_admin at level user: {other:?}"),
    }
    match user.set_weights(&[change("app", "app-1", 5)]).await {
        Err(Error::PermissionDenied { command, reply, .. }) => {
            assert_eq!(command, "set weight app/app-1 5");
            assert_eq!(reply, "Permission denied");
        }
        other => panic!("set_weights at level user: {other:?}"),
    }
    assert!(matches!(
        user.command("set weight app/app-1 5").await,
        Err(Error::PermissionDenied { .. })
    ));
    // Nothing changed.
    let stat = admin(&haproxy).show_stat().await.unwrap();
    assert_eq!(find(&stat, "app", "app-1").user_weight(), 100);
}

#[tokio::test]
async fn an_unknown_command_is_a_bad_reply() {
    let haproxy = Haproxy::start(&backend("app", "roundrobin", 1, 100)).unwrap();
    match admin(&haproxy).command("frobnicate the servers").await {
        Err(Error::BadReply { detail, .. }) => assert!(detail.starts_with("Unknown command")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_reload_brings_a_new_pid_and_forgets_runtime_weights() {
    let mut haproxy = Haproxy::start(&backend("app", "roundrobin", 2, 100)).unwrap();
    let client = admin(&haproxy);
    let before = client.show_info().await.unwrap();
    assert_eq!(before.pid, haproxy.pid());
    assert!(before.version.starts_with('2') || before.version.starts_with('3'));

    let outcomes = client
        .set_weights(&[change("app", "app-1", 3)])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![Ok(())]);
    let stat = client.show_stat().await.unwrap();
    assert_eq!(find(&stat, "app", "app-1").user_weight(), 3);

    haproxy.reload(None).unwrap();
    let after = client.show_info().await.unwrap();
    assert_ne!(after.pid, before.pid);
    assert_eq!(after.pid, haproxy.pid());
    let stat = client.show_stat().await.unwrap();
    assert_eq!(find(&stat, "app", "app-1").user_weight(), 100);

    // A reload with a new configuration: the TCP socket follows the new process too.
    haproxy
        .reload(Some(&backend("app", "roundrobin", 3, 50)))
        .unwrap();
    let tcp = Client::new(haproxy.tcp_socket().unwrap(), TIMEOUT);
    let stat = tcp.show_stat().await.unwrap();
    assert_eq!(stat.servers.len(), 3);
    assert_eq!(find(&stat, "app", "app-3").user_weight(), 50);
    assert_eq!(tcp.show_info().await.unwrap().pid, haproxy.pid());
}

#[tokio::test]
async fn a_missing_socket_is_a_connect_error() {
    let dir = tempfile::Builder::new()
        .prefix("hat-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("gone.sock");
    let client = Client::new(Address::Unix(path.clone()), TIMEOUT);
    match client.show_stat().await {
        Err(Error::Connect { addr, .. }) => assert_eq!(addr, Address::Unix(path)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.set_weights(&[change("a", "b", 1)]).await,
        Err(Error::Connect { .. })
    ));
    // A loopback port nobody listens on. Port 1, not a just-freed ephemeral port: a connect
    // to a free ephemeral port can pick that same port as its source and connect to itself.
    let tcp = Client::new(Address::Tcp("127.0.0.1:1".into()), TIMEOUT);
    assert!(matches!(
        tcp.check_admin().await,
        Err(Error::Connect { .. })
    ));
}

#[tokio::test]
async fn a_socket_that_never_answers_times_out() {
    let dir = tempfile::Builder::new()
        .prefix("hat-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("mute.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Accepts and keeps connections open without a byte of reply.
    let mute = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let timeout = Duration::from_millis(200);
    let client = Client::new(Address::Unix(path.clone()), timeout);
    let started = Instant::now();
    match client.show_info().await {
        Err(Error::Timeout { addr, timeout: t }) => {
            assert_eq!(addr, Address::Unix(path.clone()));
            assert_eq!(t, timeout);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.set_weights(&[change("a", "b", 1)]).await,
        Err(Error::Timeout { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    mute.abort();
}

#[tokio::test]
async fn garbage_replies_are_errors_not_panics() {
    let dir = tempfile::Builder::new()
        .prefix("hat-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("junk.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Answers every connection with non-UTF-8 junk and closes.
    let junk = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 256];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"\xff\xfe\x00garbage,\"unterminated\n")
                .await;
        }
    });
    let client = Client::new(Address::Unix(path), TIMEOUT);
    assert!(matches!(
        client.show_stat().await,
        Err(Error::BadReply { .. })
    ));
    assert!(matches!(
        client.show_info().await,
        Err(Error::BadReply { .. })
    ));
    assert!(matches!(
        client.check_admin().await,
        Err(Error::BadReply { .. })
    ));
    // Closed before the prompt's reply: a connection-level error, not outcomes.
    assert!(matches!(
        client.set_weights(&[change("a", "b", 1)]).await,
        Err(Error::BadReply { .. })
    ));
    junk.abort();
}

#[tokio::test]
async fn a_thousand_weights_in_one_call() {
    let cfg: String = (1..=10)
        .map(|b| backend(&format!("b{b}"), "roundrobin", 100, 100))
        .collect();
    let haproxy = Haproxy::start(&cfg).unwrap();
    let changes: Vec<WeightChange> = (1..=10)
        .flat_map(|b| {
            (1..=100).map(move |s| change(&format!("b{b}"), &format!("b{b}-{s}"), (b * s) % 257))
        })
        .collect();
    for client in [
        admin(&haproxy),
        Client::new(haproxy.tcp_socket().unwrap(), TIMEOUT),
    ] {
        let started = Instant::now();
        let outcomes = client.set_weights(&changes).await.unwrap();
        let took = started.elapsed();
        assert_eq!(outcomes.len(), 1000);
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        println!("1,000 weights over {}: {took:?}", client.address());

        let stat = client.show_stat().await.unwrap();
        assert_eq!(stat.servers.len(), 1000);
        for c in &changes {
            assert_eq!(
                find(&stat, &c.backend, &c.server).user_weight(),
                c.weight,
                "{c:?}"
            );
        }
        // Shift every weight so the second client's run is visible too.
        let changes_shifted: Vec<WeightChange> = changes
            .iter()
            .map(|c| change(&c.backend, &c.server, (c.weight + 1) % 257))
            .collect();
        let outcomes = client.set_weights(&changes_shifted).await.unwrap();
        assert!(outcomes.iter().all(|o| o.is_ok()));
        let stat = client.show_stat().await.unwrap();
        assert_eq!(find(&stat, "b1", "b1-1").user_weight(), 2);
    }
}

#[tokio::test]
async fn ten_thousand_weights_in_one_call() {
    let cfg: String = (1..=100)
        .map(|b| backend(&format!("b{b}"), "roundrobin", 100, 100))
        .collect();
    let haproxy = Haproxy::start(&cfg).unwrap();
    let client = admin(&haproxy);
    let changes: Vec<WeightChange> = (1..=100)
        .flat_map(|b| {
            (1..=100).map(move |s| change(&format!("b{b}"), &format!("b{b}-{s}"), (b + s) % 257))
        })
        .collect();
    // How fast is a benchmark's question; this test asserts every reply is read and checked.
    let outcomes = client.set_weights(&changes).await.unwrap();
    assert_eq!(outcomes.len(), 10_000);
    assert!(outcomes.iter().all(|o| o.is_ok()));
    let stat = client.show_stat().await.unwrap();
    assert_eq!(stat.servers.len(), 10_000);
    assert_eq!(find(&stat, "b100", "b100-100").user_weight(), 200);
    assert_eq!(find(&stat, "b37", "b37-5").user_weight(), 42);
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len());
    assert!(std::net::TcpListener::bind(("127.0.0.1", ports[0])).is_ok());
}

/// `show servers state` gives the config's weights whatever was set since, and `show stat`
/// each server's address (an IP and port; a unix socket has none).
#[tokio::test]
async fn initial_weights_and_addresses_come_from_the_real_haproxy() {
    let cfg = "backend app\n    balance roundrobin\n    server app-1 127.0.1.1:8080 weight 30\n    \
               server app-2 [::1]:9090 weight 40\n    server app-3 unix@/tmp/nowhere.sock weight 50\n";
    let haproxy = Haproxy::start(cfg).unwrap();
    let client = admin(&haproxy);
    client
        .set_weights(&[change("app", "app-1", 99)])
        .await
        .unwrap();
    let initial = client.initial_weights().await.unwrap();
    let got: Vec<(String, u32)> = ["app-1", "app-2", "app-3"]
        .iter()
        .map(|s| {
            let key = hatune::controller::ServerKey::new("app", *s);
            (s.to_string(), initial[&key])
        })
        .collect();
    assert_eq!(
        got,
        [
            ("app-1".into(), 30),
            ("app-2".into(), 40),
            ("app-3".into(), 50)
        ]
    );
    let stat = client.show_stat().await.unwrap();
    assert_eq!(find(&stat, "app", "app-1").user_weight(), 99);
    assert_eq!(
        find(&stat, "app", "app-1").address,
        Some("127.0.1.1:8080".parse().unwrap())
    );
    assert_eq!(
        find(&stat, "app", "app-2").address,
        Some("[::1]:9090".parse().unwrap())
    );
    assert_eq!(find(&stat, "app", "app-3").address, None);
}
