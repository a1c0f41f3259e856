//! Containers from Prometheus series, for every source that reads them (a cAdvisor `/metrics`
//! scrape, the kubelet, a Prometheus server): who a series is (its identity, from its labels),
//! and its CPU samples, summed over the per-CPU series when there is no `cpu="total"`. Pure:
//! the sources feed it samples and take [`ContainerInfo`]s for [`crate::source::rate`].
//!
//! Series read (cAdvisor's names; the kubelet's are the same):
//! - `container_cpu_usage_seconds_total` (seconds; `cpu="total"`, or one series per CPU);
//! - `container_spec_cpu_quota` / `container_spec_cpu_period` (µs, when set);
//! - `machine_cpu_cores`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::rate::{ContainerInfo, CpuSpec, Sample, MAX_CORES};
use super::Nanos;

/// The series a reading needs; every other family of a scrape is passed over unparsed.
pub const WANTED: &[&str] = &[
    USAGE,
    "container_spec_cpu_quota",
    "container_spec_cpu_period",
    CORES,
];

/// Cumulative CPU seconds of a container.
pub const USAGE: &str = "container_cpu_usage_seconds_total";
/// The machine's logical cores.
pub const CORES: &str = "machine_cpu_cores";

/// How containers are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// cAdvisor's: the cgroup `id`, aliases `name` (Docker's first alias) and the id's last
    /// part (Docker's full id). Series with Kubernetes labels are named as by the kubelet.
    Cadvisor,
    /// The kubelet's: `namespace/pod/container`; the pod's own cgroup (`container=""`) and
    /// its pause container (`POD`) are not containers of an app, and are skipped.
    Kubernetes,
}

/// The container labels some template reads, by the names the series carry them under:
/// cAdvisor writes a Docker label `com.docker.compose.service` as
/// `container_label_com_docker_compose_service`.
#[derive(Debug, Clone, Default)]
pub struct LabelKeys {
    /// Series label name → the template's label name.
    by_series: HashMap<String, String>,
}

impl LabelKeys {
    /// For the labels templates read (`{label:KEY}`).
    pub fn new(keys: &HashSet<String>) -> LabelKeys {
        let mut by_series = HashMap::new();
        for key in keys {
            by_series.insert(format!("container_label_{}", sanitise(key)), key.clone());
            // The kubelet's own labels, and the image, under their names.
            if matches!(key.as_str(), "namespace" | "pod" | "container" | "image") {
                by_series.insert(key.clone(), key.clone());
            }
        }
        LabelKeys { by_series }
    }

    fn is_empty(&self) -> bool {
        self.by_series.is_empty()
    }
}

/// A label name as Prometheus client libraries write a Docker label: every character but
/// `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitise(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Who a series is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    /// The container's key within its host: its cgroup, or `namespace/pod/container`.
    key: String,
    aliases: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// The identity of a series with these labels, or `None` when it is no app container (a
/// kubelet pod cgroup or pause container) or names no container at all.
fn identity(labels: &[(&str, Cow<'_, str>)], naming: Naming, keep: &LabelKeys) -> Option<Identity> {
    let get = |name: &str| {
        labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    };
    // The kubelet's labels; Kubernetes 1.9-1.15 wrote them as `pod_name`, `container_name`.
    let pod = get("pod")
        .or_else(|| get("pod_name"))
        .filter(|p| !p.is_empty());
    let kube = naming == Naming::Kubernetes || pod.is_some();
    let (key, aliases) = if kube {
        let namespace = get("namespace")?;
        let pod = pod?;
        let container = get("container").or_else(|| get("container_name"))?;
        if container.is_empty() || container == "POD" {
            return None;
        }
        let name = format!("{namespace}/{pod}/{container}");
        (name.clone(), vec![name])
    } else {
        let id = get("id").filter(|id| !id.is_empty())?;
        let mut aliases = vec![];
        if let Some(name) = get("name").filter(|n| !n.is_empty()) {
            aliases.push(name.to_string());
            // Docker's full id, as the JSON API's second alias.
            if let Some(last) = id
                .rsplit('/')
                .next()
                .filter(|l| !l.is_empty() && *l != name)
            {
                aliases.push(last.to_string());
            }
        }
        (id.to_string(), aliases)
    };
    let mut kept = BTreeMap::new();
    if !keep.is_empty() {
        for (k, v) in labels {
            if let Some(key) = keep.by_series.get(*k) {
                kept.insert(key.clone(), v.to_string());
            }
        }
    }
    Some(Identity {
        key,
        aliases,
        labels: kept,
    })
}

/// One point of a container's usage: the `total` series' value, or the sum of the per-CPU
/// series' values at that timestamp.
#[derive(Debug, Default)]
struct Point {
    total: Option<f64>,
    per_cpu: f64,
    cpus: u32,
}

#[derive(Debug)]
struct Building {
    identity: Identity,
    /// By timestamp (ms).
    points: BTreeMap<i64, Point>,
    quota: Option<u64>,
    period: Option<u64>,
}

/// Collects the series of one host into containers.
#[derive(Debug)]
pub struct Containers<'k> {
    naming: Naming,
    keep: &'k LabelKeys,
    by_key: HashMap<String, Building>,
    /// The order containers were first seen in.
    order: Vec<String>,
    num_cores: Option<u32>,
    /// Usage samples that carried no timestamp (dated by the caller).
    pub untimed: usize,
    /// Usage samples that named no container (or a pod cgroup / pause container).
    pub skipped: usize,
}

impl<'k> Containers<'k> {
    pub fn new(naming: Naming, keep: &'k LabelKeys) -> Containers<'k> {
        Containers {
            naming,
            keep,
            by_key: HashMap::new(),
            order: vec![],
            num_cores: None,
            untimed: 0,
            skipped: 0,
        }
    }

    /// Takes one sample of one of the [`WANTED`] series (others are ignored), at `t_ms` (the
    /// sample's own timestamp, or the scrape's when it has none: say so with `timed`).
    pub fn add(&mut self, name: &str, labels: &[(&str, Cow<'_, str>)], value: f64, t_ms: i64) {
        if name == CORES {
            // The first plausible count wins; a fractional or absurd one is no count.
            if self.num_cores.is_none()
                && value.is_finite()
                && value >= 1.0
                && value <= f64::from(MAX_CORES)
                && value.fract() == 0.0
            {
                self.num_cores = Some(value as u32);
            }
            return;
        }
        let Some(identity) = identity(labels, self.naming, self.keep) else {
            if name == USAGE {
                self.skipped += 1;
            }
            return;
        };
        let key = identity.key.clone();
        let entry = self.by_key.entry(key.clone()).or_insert_with(|| {
            self.order.push(key);
            Building {
                identity,
                points: BTreeMap::new(),
                quota: None,
                period: None,
            }
        });
        let micros = || (value.is_finite() && value > 0.0 && value < 1e15).then_some(value as u64);
        match name {
            USAGE => {
                let point = entry.points.entry(t_ms).or_default();
                let cpu = labels
                    .iter()
                    .find(|(k, _)| *k == "cpu")
                    .map(|(_, v)| v.as_ref());
                match cpu {
                    // The kubelet's /metrics/resource has no `cpu` label: a total.
                    None | Some("total") => point.total = Some(value),
                    Some(_) => {
                        point.per_cpu += value;
                        point.cpus += 1;
                    }
                }
            }
            "container_spec_cpu_quota" => entry.quota = micros(),
            "container_spec_cpu_period" => entry.period = micros(),
            _ => {}
        }
    }

    /// The machine's cores, when a `machine_cpu_cores` sample gave them.
    pub fn num_cores(&self) -> Option<u32> {
        self.num_cores
    }

    /// The containers, in the order first seen, each with its samples. A container with a
    /// `total` series uses it; else at each timestamp the sum of its per-CPU series, where
    /// every CPU seen has a sample (a sum missing a CPU would read as a counter reset).
    pub fn finish(self) -> Vec<ContainerInfo> {
        let mut by_key = self.by_key;
        self.order
            .iter()
            .filter_map(|k| by_key.remove(k))
            .filter(|b| !b.points.is_empty())
            .map(|b| {
                let has_total = b.points.values().any(|p| p.total.is_some());
                let cpus = b.points.values().map(|p| p.cpus).max().unwrap_or(0);
                let samples = b
                    .points
                    .iter()
                    .filter_map(|(&t, p)| {
                        let seconds = if has_total {
                            p.total?
                        } else if p.cpus == cpus {
                            p.per_cpu
                        } else {
                            return None;
                        };
                        Some(Sample {
                            timestamp: Some(Nanos::from(t) * 1_000_000),
                            usage_total: nanos_of(seconds),
                        })
                    })
                    .collect();
                ContainerInfo {
                    name: b.identity.key,
                    aliases: b.identity.aliases,
                    labels: b.identity.labels,
                    cpu: CpuSpec {
                        quota: b.quota,
                        period: b.period,
                        cpuset_size: None,
                    },
                    samples,
                }
            })
            .collect()
    }
}

/// Seconds of CPU as the ns counter the rate computation reads; `None` when it is no counter
/// (negative, NaN, infinite, beyond u64).
fn nanos_of(seconds: f64) -> Option<u64> {
    let ns = (seconds * 1e9).round();
    (ns.is_finite() && ns >= 0.0 && ns < u64::MAX as f64).then_some(ns as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, Cow<'a, str>)> {
        pairs.iter().map(|&(k, v)| (k, Cow::Borrowed(v))).collect()
    }

    fn keep(keys: &[&str]) -> LabelKeys {
        LabelKeys::new(&keys.iter().map(|k| k.to_string()).collect())
    }

    /// Who a series is, for each shape the sources meet.
    #[test]
    fn identities() {
        let none = keep(&[]);
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Naming,
            Option<(&'a str, &'a [&'a str])>,
        );
        let cases: &[Case] = &[
            // cAdvisor: cgroup id, Docker name and full id.
            (
                &[
                    ("id", "/docker/abc123"),
                    ("name", "app-1"),
                    ("image", "nginx"),
                ],
                Naming::Cadvisor,
                Some(("/docker/abc123", &["app-1", "abc123"])),
            ),
            // A system cgroup: no alias, still a container (matches nothing).
            (
                &[("id", "/system.slice/sshd.service"), ("name", "")],
                Naming::Cadvisor,
                Some(("/system.slice/sshd.service", &[])),
            ),
            // No id at all.
            (&[("name", "x")], Naming::Cadvisor, None),
            // The kubelet's /metrics/resource.
            (
                &[
                    ("container", "web"),
                    ("namespace", "shop"),
                    ("pod", "web-7d9f-x2"),
                ],
                Naming::Kubernetes,
                Some(("shop/web-7d9f-x2/web", &["shop/web-7d9f-x2/web"])),
            ),
            // /metrics/cadvisor through cAdvisor naming: the pod label wins.
            (
                &[
                    ("container", "web"),
                    ("id", "/kubepods/x"),
                    ("name", "k8s_web"),
                    ("namespace", "shop"),
                    ("pod", "web-1"),
                ],
                Naming::Cadvisor,
                Some(("shop/web-1/web", &["shop/web-1/web"])),
            ),
            // The pod's own cgroup and its pause container are skipped.
            (
                &[("container", ""), ("namespace", "shop"), ("pod", "web-1")],
                Naming::Kubernetes,
                None,
            ),
            (
                &[
                    ("container", "POD"),
                    ("namespace", "shop"),
                    ("pod", "web-1"),
                ],
                Naming::Kubernetes,
                None,
            ),
            // Kubernetes 1.9 label names.
            (
                &[
                    ("container_name", "web"),
                    ("namespace", "shop"),
                    ("pod_name", "web-1"),
                    ("id", "/kubepods/y"),
                ],
                Naming::Cadvisor,
                Some(("shop/web-1/web", &["shop/web-1/web"])),
            ),
            // The kubelet without a namespace: not a container it can name.
            (
                &[("container", "web"), ("pod", "web-1")],
                Naming::Kubernetes,
                None,
            ),
        ];
        for (pairs, naming, want) in cases {
            let got = identity(&labels(pairs), *naming, &none);
            let got = got.as_ref().map(|i| {
                (
                    i.key.as_str(),
                    i.aliases.iter().map(String::as_str).collect::<Vec<_>>(),
                )
            });
            let want = want.map(|(k, a)| (k, a.to_vec()));
            assert_eq!(got, want, "{pairs:?}");
        }
    }

    /// Labels a template reads are kept under the template's name; others are not.
    #[test]
    fn labels_kept_are_those_templates_read() {
        let keys = keep(&["com.docker.compose.service", "pod"]);
        let l = labels(&[
            ("container_label_com_docker_compose_service", "web"),
            ("container_label_maintainer", "x"),
            ("id", "/docker/a"),
            ("name", "a"),
        ]);
        let i = identity(&l, Naming::Cadvisor, &keys).unwrap();
        assert_eq!(
            i.labels,
            BTreeMap::from([("com.docker.compose.service".into(), "web".into())])
        );
        let l = labels(&[("container", "c"), ("namespace", "n"), ("pod", "p")]);
        let i = identity(&l, Naming::Kubernetes, &keys).unwrap();
        assert_eq!(i.labels, BTreeMap::from([("pod".into(), "p".into())]));
    }

    /// Per-CPU series are summed at each timestamp; a total wins; a timestamp missing a CPU
    /// is dropped; quota, period and cores are read; values become ns.
    #[test]
    fn samples_from_series() {
        let none = keep(&[]);
        let mut c = Containers::new(Naming::Cadvisor, &none);
        let a = [("id", "/docker/a"), ("name", "a")];
        for (cpu, t, v) in [
            ("cpu00", 1000, 1.5),
            ("cpu01", 1000, 2.25),
            ("cpu00", 2000, 2.0),
            ("cpu01", 2000, 3.0),
            // cpu01 missing at 3000: that point is no sum.
            ("cpu00", 3000, 2.5),
        ] {
            let mut l = labels(&a);
            l.push(("cpu", Cow::Borrowed(cpu)));
            c.add(USAGE, &l, v, t);
        }
        c.add("container_spec_cpu_quota", &labels(&a), 50000.0, 1000);
        c.add("container_spec_cpu_period", &labels(&a), 100000.0, 1000);
        let b = [("cpu", "total"), ("id", "/docker/b"), ("name", "b")];
        c.add(USAGE, &labels(&b), 7.0, 1000);
        c.add(
            USAGE,
            &labels(&[("cpu", "cpu00"), ("id", "/docker/b"), ("name", "b")]),
            1.0,
            1000,
        );
        c.add(
            USAGE,
            &labels(&[("id", "/docker/c"), ("name", "c")]),
            f64::NAN,
            1000,
        );
        c.add(CORES, &labels(&[("boot_id", "x")]), 4.0, 1000);
        c.add(CORES, &labels(&[]), 64.0, 1000);
        c.add(USAGE, &labels(&[("name", "nobody")]), 1.0, 1000);
        assert_eq!(c.num_cores(), Some(4));
        assert_eq!(c.skipped, 1);
        let got = c.finish();
        let s = |t_ms: i64, ns: Option<u64>| Sample {
            timestamp: Some(Nanos::from(t_ms) * 1_000_000),
            usage_total: ns,
        };
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name, "/docker/a");
        assert_eq!(got[0].aliases, ["a"]);
        assert_eq!(
            got[0].samples,
            [s(1000, Some(3_750_000_000)), s(2000, Some(5_000_000_000))]
        );
        assert_eq!(got[0].cpu.quota, Some(50000));
        assert_eq!(got[0].cpu.period, Some(100000));
        assert_eq!(got[1].samples, [s(1000, Some(7_000_000_000))]);
        assert_eq!(got[2].samples, [s(1000, None)]);
    }

    #[test]
    fn cores_must_be_a_whole_plausible_count() {
        let none = keep(&[]);
        for (v, want) in [
            (0.0, None),
            (2.5, None),
            (f64::INFINITY, None),
            (9000.0, None),
            (8.0, Some(8)),
        ] {
            let mut c = Containers::new(Naming::Cadvisor, &none);
            c.add(CORES, &[], v, 0);
            assert_eq!(c.num_cores(), want, "{v}");
        }
    }

    #[test]
    fn sanitised_like_client_libraries() {
        assert_eq!(
            sanitise("com.docker.compose.service"),
            "com_docker_compose_service"
        );
        assert_eq!(sanitise("a-b/c_d9"), "a_b_c_d9");
    }
}
