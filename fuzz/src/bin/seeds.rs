//! Writes the starting corpus of every target to `OUTDIR/TARGET/`, from hatune's own material
//! only: the HAProxy replies in `tests/fixtures/haproxy/`, cAdvisor replies rendered by the
//! fake cAdvisor (`docker_body`, `machine_body`), the exposition text in
//! `tests/fixtures/prometheus/`, `config.example.json`, the configs in `fuzz/seeds/config/`, and
//! weight sets and instance records as the peers encode them (`WeightSet`, `InstanceRecord`),
//! with near-misses a decode must refuse.
//!
//! `seeds OUTDIR`

use std::fs;
use std::path::{Path, PathBuf};

use hatune::peers::set::Weights;
use hatune::peers::{InstanceRecord, WeightSet};
use hatune::testkit::cadvisor::{docker_body, machine_body, FakeContainer};
use serde_json::{json, Value};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: seeds OUTDIR"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = root.join("tests/fixtures/haproxy");
    let mut seeds = Seeds { out };

    for layout in ["2.2-shaped", "2.6.12", "3.2-shaped", "3.4-shaped"] {
        let csv = read(&fixtures.join(layout).join("show_stat.csv"));
        seeds.put("show_stat", &format!("{layout}.csv"), &csv);
        // The header and the first rows: small inputs run fastest.
        let head: Vec<&[u8]> = csv.split(|&b| b == b'\n').take(5).collect();
        seeds.put(
            "show_stat",
            &format!("{layout}-head.csv"),
            &head.join(&b'\n'),
        );
    }
    seeds.put(
        "show_info",
        "2.6.12.txt",
        &read(&fixtures.join("2.6.12/show_info.txt")),
    );

    // Read sizes first (see `checks::prompt_reply`), then the session captured from 2.6.12.
    let session = read(&fixtures.join("2.6.12/set_weight_prompt.raw"));
    for (name, sizes) in [
        ("whole", &[][..]),
        ("bytes", &[1][..]),
        ("odd", &[1, 5, 7][..]),
        ("empty-reads", &[0, 3][..]),
    ] {
        let mut data = vec![sizes.len() as u8];
        data.extend_from_slice(sizes);
        data.extend_from_slice(&session);
        seeds.put("prompt_reply", &format!("2.6.12-{name}.raw"), &data);
    }

    // Fixed `now` and seed: the same corpus on every run.
    let now = 1_750_000_000 * 1_000_000_000;
    let containers = [
        FakeContainer::new("app-1", 0.5),
        FakeContainer::new("app-2", 0.25).with_quota(1.0),
    ];
    let body: Value = serde_json::from_str(&docker_body(2, &containers, now, 1)).unwrap();
    let docker = body.as_object().unwrap();
    let trimmed = |keep: usize, minimal: bool| -> Vec<(String, Value)> {
        docker
            .iter()
            .map(|(k, c)| {
                let mut c = c.clone();
                let stats = c["stats"].as_array_mut().unwrap();
                stats.truncate(keep);
                if minimal {
                    for s in stats.iter_mut() {
                        *s = json!({"timestamp": s["timestamp"], "cpu": {"usage": {"total": s["cpu"]["usage"]["total"]}}});
                    }
                    c = json!({"name": c["name"], "aliases": c["aliases"],
                               "spec": {"cpu": c["spec"]["cpu"]}, "stats": c["stats"]});
                }
                (k.clone(), c)
            })
            .collect()
    };
    let object = |entries: Vec<(String, Value)>| {
        serde_json::to_vec(&entries.into_iter().collect::<serde_json::Map<_, _>>()).unwrap()
    };
    let array = |entries: Vec<(String, Value)>| {
        serde_json::to_vec(&entries.into_iter().map(|(_, c)| c).collect::<Vec<_>>()).unwrap()
    };
    seeds.put(
        "cadvisor_containers",
        "docker-3.json",
        &object(trimmed(3, false)),
    );
    seeds.put(
        "cadvisor_containers",
        "docker-min.json",
        &object(trimmed(3, true)),
    );
    seeds.put(
        "cadvisor_containers",
        "subcontainers-min.json",
        &array(trimmed(2, true)),
    );
    seeds.put("cadvisor_containers", "empty.json", b"{}");

    for cores in [1, 4] {
        seeds.put(
            "cadvisor_machine",
            &format!("machine-{cores}.json"),
            machine_body(cores).as_bytes(),
        );
    }
    seeds.put("cadvisor_machine", "min.json", br#"{"num_cores":2}"#);

    let exposition = read(&root.join("tests/fixtures/prometheus/cadvisor_metrics_ours.txt"));
    seeds.put("exposition", "cadvisor_metrics_ours.txt", &exposition);
    let samples_only: Vec<&[u8]> = exposition
        .split(|&b| b == b'\n')
        .filter(|l| !l.starts_with(b"#"))
        .take(3)
        .collect();
    seeds.put("exposition", "three-lines.txt", &samples_only.join(&b'\n'));
    seeds.put("exposition", "min.txt", b"m{a=\"\\\"\"} NaN 1\n");

    seeds.put(
        "config",
        "example.json",
        &read(&root.join("config.example.json")),
    );
    let mut written: Vec<_> = fs::read_dir(root.join("fuzz/seeds/config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    written.sort();
    for path in written {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        seeds.put("config", &name, &read(&path));
    }

    let set = |weights: &[(&str, &str, u32)]| {
        let mut w = Weights::new();
        for (b, s, x) in weights {
            w.entry(b.to_string())
                .or_default()
                .insert(s.to_string(), *x);
        }
        WeightSet {
            leader: "lb-1".into(),
            at_ms: 1_750_000_000_123,
            weights: w,
        }
        .encode()
    };
    let full = set(&[
        ("app", "app-1", 150),
        ("app", "app-2", 90),
        ("app", "static", 3),
        ("db", "db-1", 7),
    ]);
    seeds.put("weight_set", "two-backends.json", full.as_bytes());
    seeds.put(
        "weight_set",
        "bounds.json",
        set(&[("app", "app-1", 1), ("app", "app-2", 256)]).as_bytes(),
    );
    seeds.put("weight_set", "empty.json", set(&[]).as_bytes());
    for (name, text) in [
        (
            "weight-0",
            r#"{"leader":"x","at_ms":1,"weights":{"app":{"app-1":0}}}"#,
        ),
        (
            "weight-257",
            r#"{"leader":"x","at_ms":1,"weights":{"app":{"app-1":257}}}"#,
        ),
        (
            "weight-string",
            r#"{"leader":"x","at_ms":1,"weights":{"app":{"app-1":"1"}}}"#,
        ),
        (
            "empty-server",
            r#"{"leader":"x","at_ms":1,"weights":{"app":{"":1}}}"#,
        ),
        (
            "empty-backend",
            r#"{"leader":"x","at_ms":1,"weights":{"":{"app-1":1}}}"#,
        ),
        ("no-at_ms", r#"{"leader":"x","weights":{}}"#),
    ] {
        seeds.put("weight_set", &format!("{name}.json"), text.as_bytes());
    }
    let record = InstanceRecord {
        applied: 42,
        applied_ms: 1_750_000_000_123,
        leader: true,
        requests: [("app".to_string(), [("app-1".to_string(), 1_234)].into())].into(),
    };
    seeds.put("weight_set", "record.json", record.encode().as_bytes());
}

struct Seeds {
    out: PathBuf,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, data: &[u8]) {
        assert!(hatune_fuzz::TARGETS.contains(&target), "no target {target}");
        let dir = self.out.join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), data).unwrap();
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
