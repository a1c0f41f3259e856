//! The fake's Prometheus text: cAdvisor's `/metrics`, and the kubelet's `/metrics/cadvisor` and
//! `/metrics/resource`, rendered from the same containers and counters as the JSON API.
//!
//! Layout as Go's Prometheus client writes it (`expfmt`, after `Gather` sorts): families in name
//! order, each with `# HELP` and `# TYPE` and left out when it has no series; series in
//! label-value order; labels in name order; values in Go's `%g` layout (see [`go_float`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{
    clock_shift, docker_labels, hash_str, host_series, image, memory_capacity, newest_usage,
    per_cpu_split, rss, splitmix64, user_system, Behaviour, FakeContainer, HostCgroups, Nanos,
    Series, BOOT_ID, CFS_PERIOD_US, MACHINE_ID, SYSTEM_UUID,
};

/// The `Content-Type` of every Prometheus reply (Go's `expfmt.FmtText`).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How `container_cpu_usage_seconds_total` comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuSeries {
    /// One series per CPU, `cpu="cpu00"`, `cpu="cpu01"`, ... (cgroup v1's `cpuacct.usage_percpu`),
    /// summing exactly to the container's counter.
    #[default]
    PerCpu,
    /// One series, `cpu="total"` (cgroup v2, which has no per-CPU counters).
    Total,
}

/// Which Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// cAdvisor's `/metrics`: labels `id` (`/`, `/system.slice/docker.service`,
    /// `/docker/<id>`), `image`, `name` (the first alias; `""` for the two host cgroups),
    /// `container_label_<key>` for every Docker label of any container (sanitised to
    /// `[a-zA-Z0-9_]`, `""` where a container lacks it), and `cpu` on the CPU counter.
    Cadvisor,
    /// The kubelet's `/metrics/cadvisor`: labels `container`, `id`, `image`, `name` (the
    /// container id, as cAdvisor names containerd's containers), `namespace`, `pod`, and `cpu`;
    /// rows for the root and a system cgroup (every Kubernetes label `""`), one per pod cgroup
    /// (`container=""`), one per pod's pause container (`container="POD"`), and one per
    /// container. cgroups are systemd slices:
    /// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice[/cri-containerd-<id>.scope]`.
    KubeletCadvisor,
    /// The kubelet's `/metrics/resource`: `container_*{container,namespace,pod}` (no pause
    /// container, no pod rows), `pod_*{namespace,pod}`, `node_*`, `scrape_error 0`; no
    /// `machine_cpu_cores`.
    KubeletResource,
}

impl Exposition {
    /// The CPU series this endpoint has by default: per CPU for cAdvisor, `total` for the
    /// kubelet (whose nodes run cgroup v2).
    pub fn default_cpu_series(self) -> CpuSeries {
        match self {
            Exposition::Cadvisor => CpuSeries::PerCpu,
            Exposition::KubeletCadvisor | Exposition::KubeletResource => CpuSeries::Total,
        }
    }
}

/// Renders `what` for `containers` (plus the `cadvisor` container, and the host cgroups) whose
/// rates have been constant, at `now` rounded down to the millisecond: the sample a reply to a
/// request at `now` holds, with timestamps and [`Exposition::default_cpu_series`].
/// `host_seed` varies container ids between hosts, as in [`super::docker_body`], whose newest
/// sample at the same (whole-millisecond) `now` has the same counters.
pub fn metrics_body(
    num_cores: u32,
    containers: &[FakeContainer],
    now: Nanos,
    host_seed: u64,
    what: Exposition,
) -> String {
    let series = host_series(containers, now, host_seed);
    let cgroups = HostCgroups::new(containers, now, host_seed);
    render(
        &Scrape {
            num_cores,
            seed: host_seed,
            series: &series,
            cgroups: &cgroups,
            now,
            behaviour: Behaviour::Normal,
            cpu: what.default_cpu_series(),
            timestamps: true,
        },
        what,
    )
}

/// What one scrape renders.
pub(super) struct Scrape<'a> {
    pub(super) num_cores: u32,
    pub(super) seed: u64,
    pub(super) series: &'a [Series],
    pub(super) cgroups: &'a HostCgroups,
    /// The moment of the request (rounded down to the ms for the sample).
    pub(super) now: Nanos,
    pub(super) behaviour: Behaviour,
    pub(super) cpu: CpuSeries,
    pub(super) timestamps: bool,
}

const MS: Nanos = 1_000_000;

/// The body of a reply to `what`, behaviours applied (but [`Behaviour::Oversized`]: see
/// [`pad`]).
pub(super) fn render(sc: &Scrape<'_>, what: Exposition) -> String {
    let t = sc.now.div_euclid(MS) * MS;
    let mut out =
        String::with_capacity(4096 + sc.series.len() * (sc.num_cores as usize + 12) * 300);
    match what {
        Exposition::Cadvisor => render_cadvisor(&mut out, sc, t, false),
        Exposition::KubeletCadvisor => render_cadvisor(&mut out, sc, t, true),
        Exposition::KubeletResource => render_resource(&mut out, sc, t),
    }
    if sc.behaviour == Behaviour::Garbage {
        garble(&mut out);
    }
    out
}

/// One cgroup's row at the sample.
struct Cgroup {
    /// Sorted by name.
    labels: Vec<(String, String)>,
    usage: u64,
    quota_us: Option<u64>,
    created: Nanos,
    working_set: u64,
}

fn quota_us(s: &Series) -> Option<u64> {
    s.quota_cores
        .map(|q| (q * CFS_PERIOD_US as f64).round() as u64)
}

fn sorted(mut labels: Vec<(String, String)>) -> Vec<(String, String)> {
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels
}

/// cAdvisor's `sanitizeLabelName`: every character but `[a-zA-Z0-9_]` becomes `_`.
fn sanitise(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// cAdvisor's rows: the root, a system service, every container.
fn docker_cgroups(sc: &Scrape<'_>, t: Nanos) -> Vec<Cgroup> {
    // The union of label names; of keys that sanitise alike, the first in byte order wins.
    let raw: BTreeSet<&str> = sc
        .series
        .iter()
        .flat_map(|s| docker_labels(s).into_iter().map(|(k, _)| k))
        .collect();
    let mut names: Vec<(String, &str)> = vec![];
    for k in raw {
        let name = format!("container_label_{}", sanitise(k));
        if !names.iter().any(|(n, _)| *n == name) {
            names.push((name, k));
        }
    }
    let row = |id: String, image: &str, name: &str, labels: &[(&str, &str)]| {
        let mut v = vec![
            ("id".to_owned(), id),
            ("image".to_owned(), image.to_owned()),
            ("name".to_owned(), name.to_owned()),
        ];
        for (n, k) in &names {
            let value = labels.iter().find(|(key, _)| key == k).map_or("", |l| l.1);
            v.push((n.clone(), value.to_owned()));
        }
        sorted(v)
    };
    let host = |s: &Series, id: &str| Cgroup {
        labels: row(id.to_owned(), "", "", &[]),
        usage: s.usage_at(t),
        quota_us: None,
        created: s.created,
        working_set: rss(s) << 4,
    };
    let mut rows = vec![
        host(&sc.cgroups.root, "/"),
        host(&sc.cgroups.system, "/system.slice/docker.service"),
    ];
    for s in sc.series {
        rows.push(Cgroup {
            labels: row(
                format!("/docker/{}", s.id),
                image(s),
                &s.alias,
                &docker_labels(s),
            ),
            usage: newest_usage(s, t, sc.behaviour),
            quota_us: quota_us(s),
            created: s.created,
            working_set: rss(s),
        });
    }
    rows
}

/// A pod: the containers that share a namespace and pod name, in container order.
struct Pod<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: String,
    members: Vec<&'a Series>,
}

impl Pod<'_> {
    /// The pod's cgroup (systemd driver).
    fn slice(&self) -> String {
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            self.uid.replace('-', "_")
        )
    }

    /// The pause container's id.
    fn pause_id(&self) -> String {
        hex_id(hash_str(&self.uid))
    }

    /// The pause container's counter: a few dozen ms, constant.
    fn pause_usage(&self) -> u64 {
        30_000_000 + hash_str(&self.uid) % 40_000_000
    }

    fn created(&self) -> Nanos {
        self.members.iter().map(|s| s.created).min().unwrap_or(0) - 2_000_000_000
    }

    /// The pod cgroup's counter: its containers' and the pause container's.
    fn usage(&self, t: Nanos, behaviour: Behaviour) -> u64 {
        self.members.iter().fold(self.pause_usage(), |sum, s| {
            sum.saturating_add(newest_usage(s, t, behaviour))
        })
    }

    fn working_set(&self) -> u64 {
        self.members.iter().map(|s| rss(s)).sum::<u64>() + PAUSE_WORKING_SET
    }
}

const PAUSE_WORKING_SET: u64 = 409_600;

const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// 64 hex digits from `h`, as container ids are.
fn hex_id(h: u64) -> String {
    (0..4).fold(String::with_capacity(64), |mut s, i| {
        let _ = write!(s, "{:016x}", splitmix64(h.wrapping_add(i)));
        s
    })
}

/// A UUID (version 4 in form) for pod `namespace/pod` on the host of `seed`.
fn pod_uid(namespace: &str, pod: &str, seed: u64) -> String {
    let h = splitmix64(hash_str(&format!("{namespace}/{pod}")) ^ seed);
    let l = splitmix64(h);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (l >> 48) & 0x3fff | 0x8000,
        l & 0xffff_ffff_ffff
    )
}

fn pods<'a>(series: &'a [Series], seed: u64) -> Vec<Pod<'a>> {
    let mut pods: Vec<Pod<'a>> = vec![];
    for s in series {
        let (ns, name) = (s.kube.namespace.as_str(), s.kube.pod.as_str());
        match pods
            .iter_mut()
            .find(|p| p.namespace == ns && p.name == name)
        {
            Some(p) => p.members.push(s),
            None => pods.push(Pod {
                namespace: ns,
                name,
                uid: pod_uid(ns, name, seed),
                members: vec![s],
            }),
        }
    }
    pods
}

/// The kubelet's `/metrics/cadvisor` rows.
fn kube_cgroups(sc: &Scrape<'_>, t: Nanos) -> Vec<Cgroup> {
    // Already in name order: container, id, image, name, namespace, pod.
    let row = |container: &str, id: String, image: &str, name: &str, ns: &str, pod: &str| {
        vec![
            ("container".to_owned(), container.to_owned()),
            ("id".to_owned(), id),
            ("image".to_owned(), image.to_owned()),
            ("name".to_owned(), name.to_owned()),
            ("namespace".to_owned(), ns.to_owned()),
            ("pod".to_owned(), pod.to_owned()),
        ]
    };
    let host = |s: &Series, id: &str| Cgroup {
        labels: row("", id.to_owned(), "", "", "", ""),
        usage: s.usage_at(t),
        quota_us: None,
        created: s.created,
        working_set: rss(s) << 4,
    };
    let mut rows = vec![
        host(&sc.cgroups.root, "/"),
        host(&sc.cgroups.system, "/system.slice/containerd.service"),
    ];
    for pod in pods(sc.series, sc.seed) {
        let slice = pod.slice();
        rows.push(Cgroup {
            labels: row("", slice.clone(), "", "", pod.namespace, pod.name),
            usage: pod.usage(t, sc.behaviour),
            quota_us: None,
            created: pod.created(),
            working_set: pod.working_set(),
        });
        let pause = pod.pause_id();
        rows.push(Cgroup {
            labels: row(
                "POD",
                format!("{slice}/cri-containerd-{pause}.scope"),
                PAUSE_IMAGE,
                &pause,
                pod.namespace,
                pod.name,
            ),
            usage: pod.pause_usage(),
            quota_us: None,
            created: pod.created(),
            working_set: PAUSE_WORKING_SET,
        });
        for s in &pod.members {
            rows.push(Cgroup {
                labels: row(
                    &s.kube.container,
                    format!("{slice}/cri-containerd-{}.scope", s.id),
                    image(s),
                    &s.id,
                    pod.namespace,
                    pod.name,
                ),
                usage: newest_usage(s, t, sc.behaviour),
                quota_us: quota_us(s),
                created: s.created,
                working_set: rss(s),
            });
        }
    }
    rows
}

/// One sample line of a family.
struct Line {
    /// Sorted by name.
    labels: Vec<(String, String)>,
    value: String,
    timestamp_ms: Option<i64>,
}

fn line(labels: Vec<(String, String)>, value: String, timestamp_ms: Option<i64>) -> Line {
    Line {
        labels,
        value,
        timestamp_ms,
    }
}

/// Writes a family (nothing when it has no series), series in label-value order.
fn family(out: &mut String, name: &str, help: &str, kind: &str, mut lines: Vec<Line>) {
    if lines.is_empty() {
        return;
    }
    lines.sort_by(|a, b| {
        a.labels
            .iter()
            .map(|l| &l.1)
            .cmp(b.labels.iter().map(|l| &l.1))
    });
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for l in lines {
        out.push_str(name);
        if !l.labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in l.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_into(out, v);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        out.push_str(&l.value);
        if let Some(ts) = l.timestamp_ms {
            let _ = write!(out, " {ts}");
        }
        out.push('\n');
    }
}

/// A label value as the text format escapes it: `\\`, `\"`, `\n`.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `labels` with `name="value"` added in its place.
fn with_label(labels: &[(String, String)], name: &str, value: String) -> Vec<(String, String)> {
    let mut v = labels.to_vec();
    let at = v.partition_point(|(k, _)| k.as_str() < name);
    v.insert(at, (name.to_owned(), value));
    v
}

fn machine_labels() -> Vec<(String, String)> {
    vec![
        ("boot_id".to_owned(), BOOT_ID.to_owned()),
        ("machine_id".to_owned(), MACHINE_ID.to_owned()),
        ("system_uuid".to_owned(), SYSTEM_UUID.to_owned()),
    ]
}

fn secs(t: Nanos) -> f64 {
    t.div_euclid(1_000_000_000) as f64
}

/// A series' value and timestamp.
type Cell = (String, Option<i64>);

/// cAdvisor's families (or the kubelet's `/metrics/cadvisor`, with `kube`).
fn render_cadvisor(out: &mut String, sc: &Scrape<'_>, t: Nanos, kube: bool) {
    let rows = if kube {
        kube_cgroups(sc, t)
    } else {
        docker_cgroups(sc, t)
    };
    let shift = clock_shift(sc.behaviour);
    let ts = sc.timestamps.then(|| (t + shift).div_euclid(MS) as i64);
    let each = |f: &dyn Fn(&Cgroup) -> Option<Cell>| -> Vec<Line> {
        rows.iter()
            .filter_map(|c| f(c).map(|(v, ts)| line(c.labels.clone(), v, ts)))
            .collect()
    };
    let (revision, version, runtime) = if kube {
        ("", "", "")
    } else {
        ("0d2ab1b5", "v0.49.1", "27.3.1")
    };
    let version_labels = vec![
        ("cadvisorRevision".to_owned(), revision.to_owned()),
        ("cadvisorVersion".to_owned(), version.to_owned()),
        ("dockerVersion".to_owned(), runtime.to_owned()),
        ("kernelVersion".to_owned(), "6.1.0-28-amd64".to_owned()),
        (
            "osVersion".to_owned(),
            "Debian GNU/Linux 12 (bookworm)".to_owned(),
        ),
    ];
    family(
        out,
        "cadvisor_version_info",
        "Constant 1, labelled with the versions of the kernel, the OS, the runtime and cAdvisor.",
        "gauge",
        vec![line(version_labels, "1".into(), None)],
    );
    if sc.behaviour != Behaviour::EmptyStats {
        family(
            out,
            "container_cpu_system_seconds_total",
            "Cumulative system CPU time consumed, in seconds.",
            "counter",
            each(&|c| Some((go_seconds(user_system(c.usage).1), ts))),
        );
        let usage: Vec<Line> = match sc.cpu {
            CpuSeries::PerCpu => rows
                .iter()
                .flat_map(|c| {
                    per_cpu_split(c.usage, sc.num_cores)
                        .enumerate()
                        .map(move |(i, v)| {
                            line(
                                with_label(&c.labels, "cpu", format!("cpu{i:02}")),
                                go_seconds(v),
                                ts,
                            )
                        })
                })
                .collect(),
            CpuSeries::Total => rows
                .iter()
                .map(|c| {
                    line(
                        with_label(&c.labels, "cpu", "total".into()),
                        go_seconds(c.usage),
                        ts,
                    )
                })
                .collect(),
        };
        family(
            out,
            "container_cpu_usage_seconds_total",
            "Cumulative CPU time consumed, in seconds.",
            "counter",
            usage,
        );
        family(
            out,
            "container_cpu_user_seconds_total",
            "Cumulative user CPU time consumed, in seconds.",
            "counter",
            each(&|c| Some((go_seconds(user_system(c.usage).0), ts))),
        );
    }
    family(
        out,
        "container_last_seen",
        "When the exporter last saw the container, in seconds since the epoch.",
        "gauge",
        each(&|_| Some((go_float(secs(t + shift)), ts))),
    );
    family(
        out,
        "container_memory_working_set_bytes",
        "Current working set, in bytes.",
        "gauge",
        each(&|c| Some((go_float(c.working_set as f64), ts))),
    );
    family(
        out,
        "container_spec_cpu_period",
        "CFS period of the container, in microseconds.",
        "gauge",
        each(&|_| Some((go_float(CFS_PERIOD_US as f64), None))),
    );
    family(
        out,
        "container_spec_cpu_quota",
        "CFS quota of the container, in microseconds.",
        "gauge",
        each(&|c| c.quota_us.map(|q| (go_float(q as f64), None))),
    );
    family(
        out,
        "container_spec_cpu_shares",
        "CPU shares of the container.",
        "gauge",
        each(&|_| Some((go_float(1024.0), None))),
    );
    family(
        out,
        "container_start_time_seconds",
        "Start time of the container, in seconds since the epoch.",
        "gauge",
        each(&|c| Some((go_float(secs(c.created + shift)), None))),
    );
    family(
        out,
        "machine_cpu_cores",
        "Logical CPU cores of the machine.",
        "gauge",
        vec![line(
            machine_labels(),
            go_float(f64::from(sc.num_cores)),
            ts,
        )],
    );
    family(
        out,
        "machine_memory_bytes",
        "Memory installed on the machine, in bytes.",
        "gauge",
        vec![line(
            machine_labels(),
            go_float(memory_capacity(sc.num_cores) as f64),
            ts,
        )],
    );
}

/// The kubelet's `/metrics/resource`.
fn render_resource(out: &mut String, sc: &Scrape<'_>, t: Nanos) {
    let shift = clock_shift(sc.behaviour);
    let ts = sc.timestamps.then(|| (t + shift).div_euclid(MS) as i64);
    let pods = pods(sc.series, sc.seed);
    let kube = |s: &Series| {
        vec![
            ("container".to_owned(), s.kube.container.clone()),
            ("namespace".to_owned(), s.kube.namespace.clone()),
            ("pod".to_owned(), s.kube.pod.clone()),
        ]
    };
    let pod_labels = |p: &Pod<'_>| {
        vec![
            ("namespace".to_owned(), p.namespace.to_owned()),
            ("pod".to_owned(), p.name.to_owned()),
        ]
    };
    if sc.behaviour != Behaviour::EmptyStats {
        family(
            out,
            "container_cpu_usage_seconds_total",
            "[STABLE] Cumulative CPU time consumed by the container, in core-seconds",
            "counter",
            sc.series
                .iter()
                .map(|s| line(kube(s), go_seconds(newest_usage(s, t, sc.behaviour)), ts))
                .collect(),
        );
    }
    family(
        out,
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container, in bytes",
        "gauge",
        sc.series
            .iter()
            .map(|s| line(kube(s), go_float(rss(s) as f64), ts))
            .collect(),
    );
    family(
        out,
        "container_start_time_seconds",
        "[STABLE] Start time of the container, in seconds since the epoch",
        "gauge",
        sc.series
            .iter()
            .map(|s| line(kube(s), go_float(secs(s.created + shift)), ts))
            .collect(),
    );
    let root = &sc.cgroups.root;
    family(
        out,
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative CPU time consumed by the node, in core-seconds",
        "counter",
        vec![line(vec![], go_seconds(root.usage_at(t)), ts)],
    );
    family(
        out,
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node, in bytes",
        "gauge",
        vec![line(vec![], go_float((rss(root) << 4) as f64), ts)],
    );
    family(
        out,
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative CPU time consumed by the pod, in core-seconds",
        "counter",
        pods.iter()
            .map(|p| line(pod_labels(p), go_seconds(p.usage(t, sc.behaviour)), ts))
            .collect(),
    );
    family(
        out,
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod, in bytes",
        "gauge",
        pods.iter()
            .map(|p| line(pod_labels(p), go_float(p.working_set() as f64), ts))
            .collect(),
    );
    family(
        out,
        "scrape_error",
        "[ALPHA] 1 when getting the container metrics failed, else 0",
        "gauge",
        vec![line(vec![], "0".into(), None)],
    );
}

/// A reply cut off as a proxy that gave up would leave it: a junk line (an HTML error page)
/// a third of the way in, and the text cut past the middle inside a label value, so the last
/// line is a sample cut short that no parser reads.
fn garble(out: &mut String) {
    let third = floor_boundary(out, out.len() / 3);
    let at = out[third..].find('\n').map_or(out.len(), |i| third + i + 1);
    out.insert_str(at, "<html><body><h1>502 Bad Gateway</h1></body></html>\n");
    let mid = floor_boundary(out, out.len() / 2);
    let cut = out[mid..].find("=\"").map_or(mid, |i| mid + i + 3);
    let cut = floor_boundary(out, cut.min(out.len()));
    out.truncate(cut);
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Pads `body` with comment lines (and a blank line at the very end if one byte is left) to
/// `bytes`; a longer body is left as it is.
pub(super) fn pad(body: &mut String, bytes: usize) {
    if body.len() < bytes && !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    while body.len() < bytes {
        let n = (bytes - body.len()).min(100);
        match n {
            1 => body.push('\n'),
            2..=9 => {
                body.push('#');
                body.extend(std::iter::repeat(' ').take(n - 2));
                body.push('\n');
            }
            _ => {
                body.push_str("# padding");
                body.extend(std::iter::repeat('.').take(n - 10));
                body.push('\n');
            }
        }
    }
}

/// A float as Go's `strconv.FormatFloat(f, 'g', -1, 64)` writes it (what Prometheus's `expfmt`
/// uses): the shortest digits that read back, in exponent form (`1e+06`, `2.5e-05`) when the
/// decimal exponent is below -4 or at least 6, else plain (`100000`, `0.0001`).
pub(crate) fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if f == 0.0 {
        return "0".into();
    }
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

/// A counter of `ns` nanoseconds in seconds, in [`go_float`]'s layout but exact: every
/// nanosecond is in the text (`2e-09`, `11155.288817375`, `1.2345678901234567891e+07`), where
/// Go would round to 17 significant digits.
pub(crate) fn go_seconds(ns: u64) -> String {
    if ns == 0 {
        return "0".into();
    }
    let digits = ns.to_string();
    let exp = digits.len() as i32 - 10;
    if !(-4..6).contains(&exp) {
        let sig = digits.trim_end_matches('0');
        let mut s = String::with_capacity(sig.len() + 6);
        s.push_str(&sig[..1]);
        if sig.len() > 1 {
            s.push('.');
            s.push_str(&sig[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(s, "e{sign}{:02}", exp.abs());
        s
    } else {
        let s = format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        render_docker, StatsQuery, RESTARTED_USAGE_NS, SAMPLE_INTERVAL, SIDECAR_ALIAS,
    };
    use super::*;
    use crate::source::exposition::{samples, Sample};

    const S: Nanos = 1_000_000_000;
    /// A whole millisecond, so that the JSON's newest sample and the scrape are one moment.
    const NOW: Nanos = 1_750_000_000 * S + 123_000_000;

    /// The nanoseconds a `go_seconds` text stands for, exactly (panics on a fraction of a ns).
    fn exact_ns(v: &str) -> u64 {
        let (mantissa, exp) = v.split_once('e').unwrap_or((v, "0"));
        let exp: i32 = exp.parse().unwrap();
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits: u128 = format!("{int}{frac}").parse().unwrap();
        let p = exp - frac.len() as i32 + 9;
        let ns = if p >= 0 {
            digits * 10u128.pow(p as u32)
        } else {
            let d = 10u128.pow((-p) as u32);
            assert_eq!(digits % d, 0, "{v} is not a whole number of ns");
            digits / d
        };
        u64::try_from(ns).unwrap()
    }

    fn containers() -> Vec<FakeContainer> {
        vec![
            FakeContainer::new("web1", 1.5).with_label("team/on-call", "a \"b\"\\c"),
            FakeContainer::new("web2", 0.25)
                .with_quota(0.5)
                .with_pod("shop", "web-0", "nginx"),
            FakeContainer::new("web3", 0.75).with_pod("shop", "web-0", "php"),
        ]
    }

    struct Host {
        num_cores: u32,
        series: Vec<Series>,
        cgroups: HostCgroups,
    }

    fn host(num_cores: u32) -> Host {
        let c = containers();
        Host {
            num_cores,
            series: host_series(&c, NOW - 30 * S, 42),
            cgroups: HostCgroups::new(&c, NOW - 30 * S, 42),
        }
    }

    impl Host {
        fn scrape(&self, what: Exposition, b: Behaviour, cpu: CpuSeries, ts: bool) -> String {
            render(
                &Scrape {
                    num_cores: self.num_cores,
                    seed: 42,
                    series: &self.series,
                    cgroups: &self.cgroups,
                    now: NOW,
                    behaviour: b,
                    cpu,
                    timestamps: ts,
                },
                what,
            )
        }

        /// alias → (newest total, per-CPU, timestamp) from the JSON reply at `NOW`.
        fn json_newest(&self, b: Behaviour) -> Vec<(String, u64, Vec<u64>)> {
            let q = StatsQuery {
                num_stats: Some(1),
                ..StatsQuery::default()
            };
            let body =
                render_docker(self.num_cores, &self.series, NOW, SAMPLE_INTERVAL, b, &q).unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v.as_object()
                .unwrap()
                .values()
                .map(|c| {
                    let usage = &c["stats"][0]["cpu"]["usage"];
                    (
                        c["aliases"][0].as_str().unwrap().to_owned(),
                        usage["total"].as_u64().unwrap(),
                        usage["per_cpu_usage"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap())
                            .collect(),
                    )
                })
                .collect()
        }
    }

    fn read(text: &str) -> Vec<Sample<'_>> {
        samples(text)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{e}:\n{text}"))
    }

    fn named<'a>(all: &'a [Sample<'a>], name: &str) -> Vec<&'a Sample<'a>> {
        all.iter().filter(|s| s.name == name).collect()
    }

    #[test]
    fn floats_in_gos_layout() {
        for (f, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (1024.0, "1024"),
            (100_000.0, "100000"),
            (123_456.5, "123456.5"),
            (1e6, "1e+06"),
            (1_395_066_363.0, "1.395066363e+09"),
            (4_294_967_296.0, "4.294967296e+09"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (2e-9, "2e-09"),
            (1e100, "1e+100"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(go_float(f), want, "{f:?}");
        }
    }

    #[test]
    fn seconds_are_exact() {
        for (ns, want) in [
            (0, "0"),
            (2, "2e-09"),
            (100_000, "0.0001"),
            (10_000, "1e-05"),
            (1_000_000_000, "1"),
            (113_002_857_710, "113.00285771"),
            (11_155_288_817_375, "11155.288817375"),
            (999_999_999_999_999, "999999.999999999"),
            (1_000_000_000_000_000, "1e+06"),
            (1_234_567_890_123_456_789, "1.234567890123456789e+09"),
            (u64::MAX, "1.8446744073709551615e+10"),
        ] {
            assert_eq!(go_seconds(ns), want, "{ns}");
            assert_eq!(exact_ns(want), ns);
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Every nanosecond is in the text, and it reads as the nearest float.
            #[test]
            fn seconds_read_back(ns in any::<u64>()) {
                let text = go_seconds(ns);
                prop_assert_eq!(exact_ns(&text), ns);
                let f: f64 = text.parse().unwrap();
                prop_assert!((f * 1e9 - ns as f64).abs() <= ns as f64 * 1e-15 + 1e-9);
            }
        }
    }

    const ALL: [Exposition; 3] = [
        Exposition::Cadvisor,
        Exposition::KubeletCadvisor,
        Exposition::KubeletResource,
    ];

    #[test]
    fn every_line_reads_in_every_mode() {
        let h = host(4);
        for what in ALL {
            for b in [
                Behaviour::Normal,
                Behaviour::EmptyStats,
                Behaviour::CounterReset,
                Behaviour::CounterJump,
                Behaviour::ClockAhead(3600),
                Behaviour::GetOnly,
            ] {
                for cpu in [CpuSeries::PerCpu, CpuSeries::Total] {
                    for ts in [true, false] {
                        let text = h.scrape(what, b, cpu, ts);
                        let all = read(&text);
                        assert!(!all.is_empty());
                        assert!(text.ends_with('\n'));
                        // Every sample line has a timestamp, or none has, but specs and the like.
                        let stamped = all.iter().filter(|s| s.timestamp_ms.is_some()).count();
                        assert_eq!(stamped > 0, ts, "{what:?} {b:?}");
                        let cpu_lines = named(&all, "container_cpu_usage_seconds_total");
                        assert_eq!(cpu_lines.is_empty(), b == Behaviour::EmptyStats);
                    }
                }
            }
        }
    }

    #[test]
    fn per_cpu_series_sum_to_the_json_counter() {
        for num_cores in [1, 2, 4, 7] {
            let h = host(num_cores);
            for b in [
                Behaviour::Normal,
                Behaviour::CounterReset,
                Behaviour::CounterJump,
            ] {
                let text = h.scrape(Exposition::Cadvisor, b, CpuSeries::PerCpu, true);
                let all = read(&text);
                let cpu = named(&all, "container_cpu_usage_seconds_total");
                for (alias, total, per_cpu) in h.json_newest(b) {
                    let mine: Vec<&&Sample> = cpu
                        .iter()
                        .filter(|s| s.label("name") == Some(&alias))
                        .collect();
                    assert_eq!(mine.len(), num_cores as usize, "{alias}");
                    for (i, s) in mine.iter().enumerate() {
                        assert_eq!(s.label("cpu"), Some(format!("cpu{i:02}").as_str()));
                        assert_eq!(s.timestamp_ms, Some((NOW / 1_000_000) as i64));
                    }
                    // Exactly: the text has every ns, CPU by CPU as the JSON's per_cpu_usage.
                    let text_line = |s: &Sample| {
                        let line = text
                            .lines()
                            .find(|l| {
                                l.starts_with("container_cpu_usage_seconds_total{")
                                    && l.contains(&format!("cpu=\"{}\"", s.label("cpu").unwrap()))
                                    && l.contains(&format!("name=\"{alias}\""))
                            })
                            .unwrap();
                        // The value is before the timestamp (label values may hold spaces).
                        exact_ns(line.rsplit(' ').nth(1).unwrap())
                    };
                    let exact: Vec<u64> = mine.iter().map(|s| text_line(s)).collect();
                    assert_eq!(exact, per_cpu, "{alias} {b:?}");
                    assert_eq!(
                        exact.iter().fold(0u64, |a, &x| a.wrapping_add(x)),
                        total,
                        "{alias}"
                    );
                    // As floats, within a nanosecond or so of the counter.
                    if b != Behaviour::CounterJump {
                        let sum: f64 = mine.iter().map(|s| s.value).sum();
                        assert!(
                            (sum * 1e9 - total as f64).abs() < 2.0,
                            "{alias}: {sum} vs {total}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn total_series_are_the_json_counter() {
        let h = host(4);
        let json = h.json_newest(Behaviour::Normal);
        let cadvisor = h.scrape(
            Exposition::Cadvisor,
            Behaviour::Normal,
            CpuSeries::Total,
            true,
        );
        let kube = h.scrape(
            Exposition::KubeletCadvisor,
            Behaviour::Normal,
            CpuSeries::Total,
            true,
        );
        let resource = h.scrape(
            Exposition::KubeletResource,
            Behaviour::Normal,
            CpuSeries::Total,
            true,
        );
        let (cadvisor, kube, resource) = (read(&cadvisor), read(&kube), read(&resource));
        assert_eq!(json.len(), h.series.len());
        for (alias, total, _) in &json {
            let s = h.series.iter().find(|s| &s.alias == alias).unwrap();
            let want = *total as f64 / 1e9;
            let one = |all: &[Sample], key: &str, value: &str| -> f64 {
                let found: Vec<_> = named(all, "container_cpu_usage_seconds_total")
                    .into_iter()
                    .filter(|x| x.label(key) == Some(value))
                    .collect();
                assert_eq!(found.len(), 1, "{alias}");
                if all.iter().any(|x| x.label("cpu").is_some()) {
                    assert_eq!(found[0].label("cpu"), Some("total"));
                }
                found[0].value
            };
            assert_eq!(one(&cadvisor, "name", alias), want);
            assert_eq!(one(&kube, "name", &s.id), want);
            let r: Vec<_> = named(&resource, "container_cpu_usage_seconds_total")
                .into_iter()
                .filter(|x| {
                    x.label("pod") == Some(&s.kube.pod)
                        && x.label("container") == Some(&s.kube.container)
                })
                .collect();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].value, want);
            assert_eq!(r[0].timestamp_ms, Some((NOW / 1_000_000) as i64));
        }
    }

    #[test]
    fn labels_as_cadvisor_writes_them() {
        let h = host(2);
        let text = h.scrape(
            Exposition::Cadvisor,
            Behaviour::Normal,
            CpuSeries::PerCpu,
            true,
        );
        let all = read(&text);
        // Families in name order, each once, with HELP and TYPE.
        let mut families: Vec<&str> = all.iter().map(|s| s.name).collect();
        families.dedup();
        let mut sorted_families = families.clone();
        sorted_families.sort();
        sorted_families.dedup();
        assert_eq!(families, sorted_families);
        for f in &families {
            assert!(text.contains(&format!("# HELP {f} ")), "{f}");
            assert!(text.contains(&format!("# TYPE {f} ")), "{f}");
        }
        let cpu = named(&all, "container_cpu_usage_seconds_total");
        fn names<'a>(s: &Sample<'a>) -> Vec<&'a str> {
            s.labels.iter().map(|(k, _)| *k).collect()
        }
        let want = [
            "container_label_com_docker_compose_project",
            "container_label_com_docker_compose_service",
            "container_label_maintainer",
            "container_label_team_on_call",
            "cpu",
            "id",
            "image",
            "name",
        ];
        for s in &cpu {
            assert_eq!(names(s), want);
        }
        // Series in label-value order.
        let values: Vec<Vec<&str>> = cpu
            .iter()
            .map(|s| s.labels.iter().map(|(_, v)| v.as_ref()).collect())
            .collect();
        let mut sorted_values = values.clone();
        sorted_values.sort();
        assert_eq!(values, sorted_values);
        // The host cgroups, with every container label empty; the sidecar too.
        let ids: BTreeSet<&str> = cpu.iter().map(|s| s.label("id").unwrap()).collect();
        assert!(ids.contains("/") && ids.contains("/system.slice/docker.service"));
        assert_eq!(ids.len(), 2 + h.series.len());
        let root = cpu.iter().find(|s| s.label("id") == Some("/")).unwrap();
        assert_eq!(root.label("name"), Some(""));
        assert_eq!(root.label("image"), Some(""));
        assert_eq!(root.label("container_label_maintainer"), Some(""));
        let web1 = cpu
            .iter()
            .find(|s| s.label("name") == Some("web1"))
            .unwrap();
        assert_eq!(
            web1.label("container_label_team_on_call"),
            Some("a \"b\"\\c")
        );
        assert_eq!(
            web1.label("id").unwrap(),
            format!("/docker/{}", h.series[0].id)
        );
        let web2 = cpu
            .iter()
            .find(|s| s.label("name") == Some("web2"))
            .unwrap();
        assert_eq!(web2.label("container_label_team_on_call"), Some(""));
        assert!(cpu.iter().any(|s| s.label("name") == Some(SIDECAR_ALIAS)));
        // Specs: the period everywhere, the quota only where set.
        assert_eq!(
            named(&all, "container_spec_cpu_period").len(),
            2 + h.series.len()
        );
        assert!(named(&all, "container_spec_cpu_period")
            .iter()
            .all(|s| s.value == 100_000.0 && s.timestamp_ms.is_none()));
        let quota = named(&all, "container_spec_cpu_quota");
        assert_eq!(quota.len(), 1);
        assert_eq!(quota[0].label("name"), Some("web2"));
        assert_eq!(quota[0].value, 50_000.0);
        let cores = named(&all, "machine_cpu_cores");
        assert_eq!(cores.len(), 1);
        assert_eq!(cores[0].value, 2.0);
        assert_eq!(cores[0].label("boot_id"), Some(BOOT_ID));
    }

    #[test]
    fn the_kubelets_cadvisor_has_pod_and_pause_rows() {
        let h = host(2);
        let text = h.scrape(
            Exposition::KubeletCadvisor,
            Behaviour::Normal,
            CpuSeries::Total,
            true,
        );
        let all = read(&text);
        let cpu = named(&all, "container_cpu_usage_seconds_total");
        let names: Vec<&str> = cpu[0].labels.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "container",
                "cpu",
                "id",
                "image",
                "name",
                "namespace",
                "pod"
            ]
        );
        // Pods: default/web1, shop/web-0 (two containers), kube-system/cadvisor.
        let pod_rows: Vec<_> = cpu
            .iter()
            .filter(|s| s.label("container") == Some("") && s.label("pod") != Some(""))
            .collect();
        assert_eq!(pod_rows.len(), 3);
        let pause: Vec<_> = cpu
            .iter()
            .filter(|s| s.label("container") == Some("POD"))
            .collect();
        assert_eq!(pause.len(), 3);
        assert!(pause.iter().all(|s| s.label("image") == Some(PAUSE_IMAGE)));
        let shop = |c: &str| {
            cpu.iter()
                .find(|s| s.label("pod") == Some("web-0") && s.label("container") == Some(c))
                .unwrap()
        };
        let sum = shop("nginx").value + shop("php").value + shop("POD").value;
        assert!(
            (shop("").value - sum).abs() < 1e-6,
            "the pod is its containers"
        );
        assert!(shop("nginx")
            .label("id")
            .unwrap()
            .starts_with(shop("").label("id").unwrap()));
        assert_eq!(shop("nginx").label("namespace"), Some("shop"));
        let web1 = cpu
            .iter()
            .find(|s| s.label("pod") == Some("web1") && s.label("container") == Some("app"))
            .unwrap();
        assert_eq!(web1.label("namespace"), Some("default"));
        assert_eq!(web1.label("name"), Some(h.series[0].id.as_str()));
        let sidecar = cpu
            .iter()
            .find(|s| s.label("container") == Some(SIDECAR_ALIAS))
            .unwrap();
        assert_eq!(sidecar.label("namespace"), Some("kube-system"));
        let root = cpu.iter().find(|s| s.label("id") == Some("/")).unwrap();
        assert_eq!(
            (root.label("container"), root.label("pod")),
            (Some(""), Some(""))
        );
        assert_eq!(named(&all, "machine_cpu_cores")[0].value, 2.0);
        assert!(!text.contains("container_label_"));
    }

    #[test]
    fn the_kubelets_resource_metrics() {
        let h = host(2);
        let text = h.scrape(
            Exposition::KubeletResource,
            Behaviour::Normal,
            CpuSeries::Total,
            true,
        );
        let all = read(&text);
        let cpu = named(&all, "container_cpu_usage_seconds_total");
        assert_eq!(cpu.len(), h.series.len());
        for s in &cpu {
            let names: Vec<&str> = s.labels.iter().map(|(k, _)| *k).collect();
            assert_eq!(names, ["container", "namespace", "pod"]);
            assert!(!matches!(s.label("container"), Some("" | "POD")));
        }
        assert!(named(&all, "machine_cpu_cores").is_empty());
        assert_eq!(named(&all, "scrape_error")[0].value, 0.0);
        assert_eq!(named(&all, "node_cpu_usage_seconds_total").len(), 1);
        let pods = named(&all, "pod_cpu_usage_seconds_total");
        assert_eq!(pods.len(), 3);
        let shop = pods
            .iter()
            .find(|s| s.label("pod") == Some("web-0"))
            .unwrap();
        let members: f64 = cpu
            .iter()
            .filter(|s| s.label("pod") == Some("web-0"))
            .map(|s| s.value)
            .sum();
        assert!(shop.value > members && shop.value < members + 0.1);
    }

    #[test]
    fn behaviours_shape_the_text() {
        let h = host(2);
        let scrape = |what, b| h.scrape(what, b, CpuSeries::Total, true);
        let value = |text: &str, alias: &str| -> f64 {
            read(text)
                .iter()
                .find(|s| {
                    s.name == "container_cpu_usage_seconds_total" && s.label("name") == Some(alias)
                })
                .map(|s| s.value)
                .unwrap()
        };
        let normal = scrape(Exposition::Cadvisor, Behaviour::Normal);
        let reset = scrape(Exposition::Cadvisor, Behaviour::CounterReset);
        assert_eq!(value(&reset, "web1"), RESTARTED_USAGE_NS as f64 / 1e9);
        assert_eq!(value(&reset, SIDECAR_ALIAS), value(&normal, SIDECAR_ALIAS));
        let jump = scrape(Exposition::Cadvisor, Behaviour::CounterJump);
        assert_eq!(value(&jump, "web1"), u64::MAX as f64 / 1e9);
        // A clock ahead: later timestamps, the same counters.
        let ahead = scrape(Exposition::Cadvisor, Behaviour::ClockAhead(3600));
        assert_eq!(value(&ahead, "web1"), value(&normal, "web1"));
        let ts = |text: &str| read(text)[1].timestamp_ms.unwrap();
        assert_eq!(ts(&ahead) - ts(&normal), 3_600_000);
        // Without timestamps: none at all.
        let bare = h.scrape(
            Exposition::Cadvisor,
            Behaviour::Normal,
            CpuSeries::PerCpu,
            false,
        );
        assert!(read(&bare).iter().all(|s| s.timestamp_ms.is_none()));
        // Garbage: a junk line, and the last line cut off inside its labels.
        for what in ALL {
            let text = scrape(what, Behaviour::Garbage);
            let errors: Vec<_> = samples(&text).filter_map(Result::err).collect();
            assert!(errors.len() >= 2, "{what:?}: {errors:?}");
            assert!(!text.ends_with('\n'));
            let last = text.lines().last().unwrap();
            assert!(last.contains('{') && !last.contains('}'), "{last}");
            assert!(samples(last).next().unwrap().is_err());
            assert!(text.len() < scrape(what, Behaviour::Normal).len());
        }
    }

    #[test]
    fn padding_is_comments_to_the_byte() {
        let h = host(2);
        let body = h.scrape(
            Exposition::Cadvisor,
            Behaviour::Normal,
            CpuSeries::PerCpu,
            true,
        );
        let n = read(&body).len();
        for bytes in [
            0,
            body.len(),
            body.len() + 1,
            body.len() + 9,
            body.len() + 12_345,
        ] {
            let mut padded = body.clone();
            pad(&mut padded, bytes);
            assert_eq!(padded.len(), bytes.max(body.len()));
            assert_eq!(read(&padded).len(), n);
        }
    }
}
