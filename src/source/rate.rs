//! The one rate computation every source shares: cumulative CPU counters to utilisation over a
//! window of samples, from the samples' own timestamps. cAdvisor's JSON, a `/metrics` scrape, the
//! kubelet and a Prometheus server each reduce what they read to [`ContainerInfo`]s (a
//! container's identity, CPU spec and samples) and call [`utilisation_at`] over a [`Window`], or
//! [`utilisation_from_mark`] from the previous poll's [`Mark`]: the same window, reset, clock and
//! bound rules whatever the source.

use std::time::Duration;

use std::collections::BTreeMap;

use super::{Nanos, NoReading, Utilisation};

/// The kernel's default CFS period (100 ms, in µs), assumed when a quota comes without a period.
const DEFAULT_CFS_PERIOD_US: u64 = 100_000;

/// Samples dated further than this ahead of hatune's own clock are not believed: a host whose
/// clock is off (or one garbled timestamp) must not become the end of a window, nor the anchor of
/// the next one.
pub const FUTURE_SLACK: Duration = Duration::from_secs(300);

/// A reading above this share of what the container can really use (its quota, its cpuset, the
/// machine, whichever is least) is not possible: a counter that jumped, not load.
pub const MAX_SHARE: f64 = 1.5;

/// More CPUs than any machine has (Linux's largest `NR_CPUS`): a core count, cpuset or quota
/// beyond this is garbage, not a size.
pub const MAX_CORES: u32 = 8192;

/// Which samples of a container make up one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The newest samples spanning this long (from the newest sample back): `hatune once`,
    /// and a host's first poll in the daemon.
    Span(Duration),
    /// From the newest sample at or before this time (the previous poll's newest sample of that
    /// host) to the newest sample: the daemon, so each reading covers what the last change did.
    Since(Nanos),
}

/// The CPU part of a container's spec. Quota and period are in µs, as cAdvisor reports them;
/// `spec.cpu.limit` (shares) is deliberately not read: it is a relative weight, not a cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSpec {
    /// CFS quota in µs per period; absent when the container is unlimited.
    pub quota: Option<u64>,
    /// CFS period in µs.
    pub period: Option<u64>,
    /// Size of the cpuset (`spec.cpu.mask`), when it parsed.
    pub cpuset_size: Option<u32>,
}

/// One stats sample: when it was taken and the cumulative CPU time at that moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// `timestamp`, or `None` when missing or not RFC 3339.
    pub timestamp: Option<Nanos>,
    /// `cpu.usage.total` in ns, or `None` when missing, negative or beyond u64.
    pub usage_total: Option<u64>,
}

/// One container of a cAdvisor reply, reduced to what a reading needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// cgroup name, e.g. `/docker/1d6e…` (the object key when the entry has no `name`).
    pub name: String,
    /// Docker aliases: `[name, full id]`; empty for non-Docker cgroups.
    pub aliases: Vec<String>,
    /// `spec.labels` whose values are strings.
    pub labels: BTreeMap<String, String>,
    pub cpu: CpuSpec,
    /// Samples in reply order (not necessarily sorted).
    pub samples: Vec<Sample>,
}

/// A window never reaches further back than its own length again (and at least this): a sample
/// dated 1970 in a list of today's must not make a window of decades.
const MIN_SLACK_NS: Nanos = 1_000_000_000;

/// Utilisation of one container over `window`, from its sample timestamps (never an assumed
/// interval), with no bound on how far ahead of the clock samples may be: see
/// [`utilisation_at`].
pub fn utilisation(
    c: &ContainerInfo,
    num_cores: u32,
    window: Window,
) -> Result<Utilisation, NoReading> {
    utilisation_at(c, num_cores, window, Nanos::MAX)
}

/// Utilisation of one container over `window`, as seen at `now` (hatune's clock, ns since the
/// epoch).
///
/// Samples without a parseable timestamp or CPU counter are skipped, and so are samples dated
/// more than [`FUTURE_SLACK`] after `now`; the rest are sorted by timestamp. The window ends at
/// the newest sample and starts at:
/// - [`Window::Span`]`(d)`: the newest sample at or before `end − d` (so the span covers `d`),
///   else the oldest sample;
/// - [`Window::Since`]`(t)`: the newest sample at or before `t`, else the oldest sample;
///
/// but never at a sample older than the window's own length again before that point (such a
/// sample is ignored). A window whose anchor `t` is newer than every sample means the host's
/// clock went back.
///
/// Capacity is the CFS quota/period when a quota is set, else the cpuset size when narrower than
/// the machine, else `num_cores`. `spec.cpu.limit` (shares) is not a cap and is not used. A
/// reading above [`MAX_SHARE`] of what the container can really use is refused.
pub fn utilisation_at(
    c: &ContainerInfo,
    num_cores: u32,
    window: Window,
    now: Nanos,
) -> Result<Utilisation, NoReading> {
    let latest = now.saturating_add(Nanos::from(FUTURE_SLACK.as_secs()) * 1_000_000_000);
    let mut ahead = 0usize;
    let mut ahead_by: Nanos = 0;
    let mut samples: Vec<(Nanos, u64)> = Vec::with_capacity(c.samples.len());
    for s in &c.samples {
        let (Some(t), Some(u)) = (s.timestamp, s.usage_total) else {
            continue;
        };
        if t > latest {
            ahead += 1;
            ahead_by = ahead_by.max(t - now);
        } else {
            samples.push((t, u));
        }
    }
    let too_few = || match ahead {
        0 => NoReading::TooFewSamples,
        n => NoReading::AheadOfClock {
            samples: n,
            by_secs: u64::try_from(ahead_by / 1_000_000_000).unwrap_or(u64::MAX),
        },
    };
    if samples.len() < 2 {
        return Err(too_few());
    }
    // Stable sort: cAdvisor usually sends samples oldest first already, so this is cheap.
    samples.sort_by_key(|&(t, _)| t);

    let end_t = samples[samples.len() - 1].0;
    let (cutoff, length) = match window {
        Window::Span(d) => {
            let d = Nanos::try_from(d.as_nanos()).unwrap_or(Nanos::MAX / 2);
            (end_t.saturating_sub(d), d)
        }
        Window::Since(t) if t > end_t => return Err(NoReading::ClockWentBack),
        Window::Since(t) => (t, end_t.saturating_sub(t)),
    };
    let end = samples.len() - 1;
    // Newest sample at or before the cutoff, else the oldest; but none from long before it.
    let newest_before = samples
        .partition_point(|&(t, _)| t <= cutoff)
        .saturating_sub(1);
    let floor = cutoff.saturating_sub(length.max(MIN_SLACK_NS));
    let first_fresh = samples.partition_point(|&(t, _)| t < floor);
    let start = newest_before.max(first_fresh);
    if start >= end {
        return Err(if newest_before < end && first_fresh > newest_before {
            NoReading::OutsideWindow {
                samples: first_fresh,
            }
        } else {
            too_few()
        });
    }

    let used = &samples[start..=end];
    for pair in used.windows(2) {
        let ((t0, u0), (t1, u1)) = (pair[0], pair[1]);
        if u1 < u0 {
            return Err(NoReading::CounterReset);
        }
        if t1 == t0 {
            return Err(NoReading::BadTimestamps);
        }
    }
    let (from, u_from) = samples[start];
    let (to, u_to) = samples[end];
    let cores_used = (u_to - u_from) as f64 / (to - from) as f64;

    let capacity_cores = capacity(c, num_cores).ok_or(NoReading::NoCapacity)?;
    let can_use = if num_cores > 0 {
        capacity_cores.min(f64::from(num_cores))
    } else {
        capacity_cores
    };
    if cores_used > MAX_SHARE * can_use {
        return Err(NoReading::Impossible {
            used_millicores: millicores(cores_used),
            limit_millicores: millicores(can_use),
        });
    }
    Ok(Utilisation {
        cpu: cores_used / capacity_cores,
        cores_used,
        capacity_cores,
        from,
        to,
    })
}

/// A container's newest sample at a host's last poll: timestamp (ns since the epoch) and
/// cumulative CPU (ns). Where its next reading starts, so that the next poll needs only the
/// newest sample.
///
/// Saved as `[t, usage]` (a state file holds one per container of every host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "(i64, u64)", into = "(i64, u64)")]
pub struct Mark {
    pub t: Nanos,
    pub usage: u64,
}

impl From<Mark> for (i64, u64) {
    fn from(m: Mark) -> (i64, u64) {
        // Beyond i64 is the year 2262: such a sample was refused as ahead of the clock.
        (i64::try_from(m.t).unwrap_or(i64::MAX), m.usage)
    }
}

impl From<(i64, u64)> for Mark {
    fn from((t, usage): (i64, u64)) -> Mark {
        Mark {
            t: Nanos::from(t),
            usage,
        }
    }
}

/// The newest sample of `c` that a reading could use (timestamp and counter present, not
/// dated more than [`FUTURE_SLACK`] after `now`): the mark its next reading starts from.
pub fn newest_mark(c: &ContainerInfo, now: Nanos) -> Option<Mark> {
    let latest = now.saturating_add(Nanos::from(FUTURE_SLACK.as_secs()) * 1_000_000_000);
    c.samples
        .iter()
        .filter_map(|s| Some((s.timestamp?, s.usage_total?)))
        .filter(|&(t, _)| t <= latest)
        .max_by_key(|&(t, _)| t)
        .map(|(t, usage)| Mark { t, usage })
}

/// Utilisation of `c` from its mark (`None`: not seen at the last poll) to its newest
/// sample, as seen at `now`: the daemon's lean tick, whose reply holds only the newest
/// sample. The same rules as [`utilisation_at`] over [`Window::Since`] the mark (counter
/// resets, impossible readings, capacity), plus: no mark is [`NoReading::FirstSample`], a
/// newest sample that is the mark is [`NoReading::NoNewSample`], and one older than the mark
/// is [`NoReading::ClockWentBack`].
pub fn utilisation_from_mark(
    c: &ContainerInfo,
    mark: Option<Mark>,
    num_cores: u32,
    now: Nanos,
) -> Result<Utilisation, NoReading> {
    let Some(mark) = mark else {
        // Without a usable sample either, the reason is the samples' (ahead of the clock, ...).
        return match newest_mark(c, now) {
            Some(_) => Err(NoReading::FirstSample),
            None => utilisation_at(c, num_cores, Window::Since(Nanos::MIN), now),
        };
    };
    match newest_mark(c, now) {
        // Nothing usable: the reasons utilisation_at gives (ahead of the clock, too few).
        None => utilisation_at(c, num_cores, Window::Since(mark.t), now),
        Some(newest) if newest.t == mark.t => Err(NoReading::NoNewSample),
        Some(newest) if newest.t < mark.t => Err(NoReading::ClockWentBack),
        Some(_) => {
            let mut with_mark = ContainerInfo {
                name: String::new(),
                aliases: vec![],
                labels: Default::default(),
                cpu: c.cpu.clone(),
                samples: Vec::with_capacity(c.samples.len() + 1),
            };
            with_mark.samples.push(Sample {
                timestamp: Some(mark.t),
                usage_total: Some(mark.usage),
            });
            // Samples at or before the mark are already in it (a reply of more than one).
            with_mark.samples.extend(
                c.samples
                    .iter()
                    .filter(|s| s.timestamp.is_some_and(|t| t > mark.t))
                    .copied(),
            );
            utilisation_at(&with_mark, num_cores, Window::Since(mark.t), now)
        }
    }
}

fn millicores(cores: f64) -> u64 {
    // Saturating: a counter jump gives a huge figure, which is the point of the message.
    (cores * 1000.0).round() as u64
}

/// Cores a container may use, or `None` when nothing bounds it and the machine size is unknown.
/// A quota or cpuset beyond any real machine ([`MAX_CORES`]) is garbage, not a bound.
fn capacity(c: &ContainerInfo, num_cores: u32) -> Option<f64> {
    if let Some(quota) = c.cpu.quota.filter(|&q| q > 0) {
        let period = c
            .cpu
            .period
            .filter(|&p| p > 0)
            .unwrap_or(DEFAULT_CFS_PERIOD_US);
        let cores = quota as f64 / period as f64;
        if cores <= f64::from(MAX_CORES) {
            return Some(cores);
        }
    }
    match c.cpu.cpuset_size.filter(|&n| n <= MAX_CORES) {
        // A cpuset listing CPUs the machine does not report is not narrower: trust num_cores,
        // unless num_cores is unknown.
        Some(n) if n > 0 && (n < num_cores || num_cores == 0) => Some(f64::from(n)),
        _ if num_cores > 0 => Some(f64::from(num_cores)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: Nanos = 1_000_000_000;
    const T0: Nanos = 1_700_000_000 * S;

    /// A container from (seconds after T0, cumulative CPU seconds) pairs.
    fn container(points: &[(f64, f64)]) -> ContainerInfo {
        ContainerInfo {
            name: "/docker/x".into(),
            aliases: vec!["x".into()],
            labels: Default::default(),
            cpu: CpuSpec::default(),
            samples: points
                .iter()
                .map(|&(t, u)| Sample {
                    timestamp: Some(T0 + (t * 1e9) as Nanos),
                    usage_total: Some((u * 1e9) as u64),
                })
                .collect(),
        }
    }

    fn span(secs: u64) -> Window {
        Window::Span(Duration::from_secs(secs))
    }

    fn at(secs: f64) -> Nanos {
        T0 + (secs * 1e9) as Nanos
    }

    /// Samples 1.5 s apart where the rate changes from 1 core to 3 cores at t = 6.
    fn two_rates() -> ContainerInfo {
        container(&[
            (0.0, 100.0),
            (1.5, 101.5),
            (3.0, 103.0),
            (4.5, 104.5),
            (6.0, 106.0),
            (7.5, 110.5),
            (9.0, 115.0),
        ])
    }

    #[test]
    fn span_choice() {
        let c = two_rates();
        // (window, from, to, cores)
        let cases: &[(Window, f64, f64, f64)] = &[
            // Span 3 s: end 9.0, cutoff 6.0, the sample at 6.0 itself starts the window.
            (span(3), 6.0, 9.0, 3.0),
            // Span 2 s: cutoff 7.0, newest sample ≤ 7.0 is 6.0, so the span covers ≥ 2 s.
            (span(2), 6.0, 9.0, 3.0),
            // Span 1 s: cutoff 8.0 → 7.5.
            (span(1), 7.5, 9.0, 3.0),
            // Span 9 s: exactly the oldest.
            (span(9), 0.0, 9.0, 15.0 / 9.0),
            // Longer than the history: the oldest.
            (span(600), 0.0, 9.0, 15.0 / 9.0),
            // Daemon: since the previous newest sample.
            (Window::Since(at(4.5)), 4.5, 9.0, 10.5 / 4.5),
            (Window::Since(at(5.0)), 4.5, 9.0, 10.5 / 4.5),
            (Window::Since(at(6.0)), 6.0, 9.0, 3.0),
            // Since before every sample: the oldest.
            (Window::Since(at(-100.0)), 0.0, 9.0, 15.0 / 9.0),
        ];
        for &(w, from, to, cores) in cases {
            let u = utilisation(&c, 4, w).unwrap_or_else(|e| panic!("{w:?}: {e}"));
            assert_eq!((u.from, u.to), (at(from), at(to)), "{w:?}");
            assert!((u.cores_used - cores).abs() < 1e-9, "{w:?}: {u:?}");
            assert!((u.cpu - cores / 4.0).abs() < 1e-9, "{w:?}: {u:?}");
            assert_eq!(u.capacity_cores, 4.0);
        }
    }

    #[test]
    fn window_without_two_samples_is_too_few() {
        let c = two_rates();
        for w in [span(0), Window::Since(at(9.0))] {
            assert_eq!(
                utilisation(&c, 4, w),
                Err(NoReading::TooFewSamples),
                "{w:?}"
            );
        }
        // Every sample older than the last tick's newest: the host's clock went back.
        assert_eq!(
            utilisation(&c, 4, Window::Since(at(1000.0))),
            Err(NoReading::ClockWentBack)
        );
        assert_eq!(
            utilisation(&container(&[]), 4, span(60)),
            Err(NoReading::TooFewSamples)
        );
        assert_eq!(
            utilisation(&container(&[(0.0, 1.0)]), 4, span(60)),
            Err(NoReading::TooFewSamples)
        );
    }

    #[test]
    fn uses_timestamps_not_an_assumed_minute() {
        // 8 samples over 116 s, like the real dd-agent capture; 60 s would be 1.93x off.
        let c = container(&[(0.0, 0.0), (116.0, 58.0)]);
        let u = utilisation(&c, 2, span(60)).unwrap();
        assert!((u.cores_used - 0.5).abs() < 1e-12);
        assert!((u.cpu - 0.25).abs() < 1e-12);
    }

    #[test]
    fn unsorted_samples_are_sorted() {
        let mut c = two_rates();
        c.samples.reverse();
        c.samples.swap(1, 4);
        let u = utilisation(&c, 4, span(3)).unwrap();
        assert_eq!((u.from, u.to), (at(6.0), at(9.0)));
        assert!((u.cores_used - 3.0).abs() < 1e-9);
    }

    #[test]
    fn zero_cpu_is_a_reading() {
        let c = container(&[(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)]);
        let u = utilisation(&c, 2, span(60)).unwrap();
        assert_eq!(u.cpu, 0.0);
        assert_eq!(u.cores_used, 0.0);
    }

    #[test]
    fn counter_reset_inside_the_window() {
        let c = container(&[(0.0, 50.0), (1.0, 51.0), (2.0, 0.5), (3.0, 1.5)]);
        assert_eq!(utilisation(&c, 2, span(60)), Err(NoReading::CounterReset));
        // A reset before the window does not matter.
        let u = utilisation(&c, 2, span(1)).unwrap();
        assert!((u.cores_used - 1.0).abs() < 1e-9);
    }

    #[test]
    fn timestamps_equal_or_unparseable() {
        let c = container(&[(0.0, 1.0), (1.0, 2.0), (1.0, 2.0), (2.0, 3.0)]);
        assert_eq!(utilisation(&c, 2, span(60)), Err(NoReading::BadTimestamps));
        // Two samples at the same instant: span 0 is empty, a span over both has Δt = 0.
        let c = container(&[(1.0, 2.0), (1.0, 3.0)]);
        assert_eq!(utilisation(&c, 2, span(5)), Err(NoReading::BadTimestamps));

        // Unparseable samples are skipped; the rest still give a reading.
        let mut c = container(&[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]);
        c.samples[1].timestamp = None;
        let u = utilisation(&c, 2, span(60)).unwrap();
        assert!((u.cores_used - 1.0).abs() < 1e-9);
        // ...unless too few are left.
        c.samples[2].timestamp = None;
        assert_eq!(utilisation(&c, 2, span(60)), Err(NoReading::TooFewSamples));
        // A sample without a CPU counter is skipped the same way.
        let mut c = container(&[(0.0, 0.0), (1.0, 1.0)]);
        c.samples[0].usage_total = None;
        assert_eq!(utilisation(&c, 2, span(60)), Err(NoReading::TooFewSamples));
    }

    #[test]
    fn capacity_table() {
        // (quota, period, cpuset, num_cores) → capacity
        type Case = (Option<u64>, Option<u64>, Option<u32>, u32, Option<f64>);
        let cases: &[Case] = &[
            (None, None, None, 4, Some(4.0)),
            (Some(200_000), Some(100_000), None, 4, Some(2.0)),
            (Some(50_000), Some(100_000), Some(1), 4, Some(0.5)),
            (Some(150_000), None, None, 4, Some(1.5)),
            (Some(0), Some(100_000), None, 4, Some(4.0)),
            // Quota beyond the machine still is the container's limit.
            (Some(800_000), Some(100_000), None, 4, Some(8.0)),
            (None, None, Some(3), 8, Some(3.0)),
            (None, None, Some(8), 8, Some(8.0)),
            (None, None, Some(16), 8, Some(8.0)),
            (None, None, Some(2), 0, Some(2.0)),
            (Some(100_000), Some(100_000), None, 0, Some(1.0)),
            (None, None, None, 0, None),
        ];
        for &(quota, period, cpuset_size, n, want) in cases {
            let mut c = container(&[(0.0, 0.0), (2.0, 1.0)]);
            c.cpu = CpuSpec {
                quota,
                period,
                cpuset_size,
            };
            let got = utilisation(&c, n, span(60));
            match want {
                Some(cap) => {
                    let u = got.unwrap();
                    assert_eq!(u.capacity_cores, cap, "{:?} n={n}", c.cpu);
                    assert!((u.cpu - 0.5 / cap).abs() < 1e-12);
                }
                None => assert_eq!(got, Err(NoReading::NoCapacity)),
            }
        }
    }

    /// A counter that jumps to u64::MAX is not load: no reading, whatever the window.
    #[test]
    fn huge_counters_are_impossible_readings() {
        let mut c = container(&[(0.0, 0.0), (1.0, 0.0)]);
        c.samples[0].usage_total = Some(0);
        c.samples[1].usage_total = Some(u64::MAX);
        for w in [Window::Span(Duration::MAX), Window::Since(Nanos::MIN)] {
            match utilisation(&c, 2, w) {
                Err(NoReading::Impossible {
                    used_millicores,
                    limit_millicores,
                }) => {
                    assert!(used_millicores > 1_000_000_000_000, "{w:?}");
                    assert_eq!(limit_millicores, 2000);
                }
                other => panic!("{w:?}: {other:?}"),
            }
        }
    }

    /// What the container can really use is the least of its quota, its cpuset and the
    /// machine: up to 1.5 times that is a reading (accounting skew, CFS bursts), beyond it not.
    #[test]
    fn readings_beyond_what_the_container_can_use_are_refused() {
        // (cores used over 2 s, quota cores, num_cores) → reading or not
        let cases: &[(f64, Option<f64>, u32, bool)] = &[
            (1.4, Some(1.0), 4, true),
            (1.6, Some(1.0), 4, false),
            (5.9, None, 4, true),
            (6.1, None, 4, false),
            // A quota beyond the machine: the machine is the bound.
            (6.1, Some(8.0), 4, false),
            (5.0, Some(8.0), 4, true),
        ];
        for &(used, quota, n, ok) in cases {
            let mut c = container(&[(0.0, 0.0), (2.0, 2.0 * used)]);
            c.cpu.quota = quota.map(|q| (q * 100_000.0) as u64);
            c.cpu.period = quota.map(|_| 100_000);
            let got = utilisation(&c, n, span(60));
            assert_eq!(got.is_ok(), ok, "{used} of {quota:?} on {n}: {got:?}");
            if !ok {
                assert!(matches!(got, Err(NoReading::Impossible { .. })), "{got:?}");
            }
        }
        // A quota or a cpuset no machine has is garbage, not a bound: the machine is.
        let mut c = container(&[(0.0, 0.0), (2.0, 1.0)]);
        c.cpu.quota = Some(u64::MAX / 2);
        assert_eq!(utilisation(&c, 4, span(60)).unwrap().capacity_cores, 4.0);
        c.cpu.quota = None;
        c.cpu.cpuset_size = Some(4_000_000_000);
        assert_eq!(utilisation(&c, 2, span(60)).unwrap().capacity_cores, 2.0);
        assert_eq!(
            utilisation(&c, 0, span(60)),
            Err(NoReading::NoCapacity),
            "and no machine size known"
        );
    }

    /// One sample dated 1970 (or year 1) first in the list: ignored, the window covers the
    /// real samples, not decades.
    #[test]
    fn samples_from_long_before_the_window_are_ignored() {
        let mut c = container(&[(0.0, 100.0), (30.0, 115.0), (59.0, 129.5)]);
        for ancient in [0, -62_135_596_800 * S] {
            c.samples.insert(
                0,
                Sample {
                    timestamp: Some(ancient),
                    usage_total: Some(1),
                },
            );
            for w in [span(60), Window::Since(at(30.0))] {
                let u = utilisation(&c, 2, w).unwrap_or_else(|e| panic!("{w:?}: {e}"));
                assert!((u.cores_used - 0.5).abs() < 1e-9, "{w:?}: {u:?}");
                assert!(u.from >= T0, "{w:?}: {u:?}");
            }
            c.samples.remove(0);
        }
        // Only the ancient sample and one real one: too few in the window, and it says why.
        let mut lone = container(&[(59.0, 129.5)]);
        lone.samples.insert(
            0,
            Sample {
                timestamp: Some(0),
                usage_total: Some(1),
            },
        );
        assert_eq!(
            utilisation(&lone, 2, span(60)),
            Err(NoReading::OutsideWindow { samples: 1 })
        );
    }

    /// Samples dated more than FUTURE_SLACK ahead of hatune's clock are ignored: the newest
    /// real sample ends the window.
    #[test]
    fn samples_ahead_of_the_clock_are_ignored() {
        let now = at(60.0);
        let mut c = container(&[(0.0, 0.0), (30.0, 15.0), (59.0, 29.5)]);
        c.samples.push(Sample {
            timestamp: Some(at(60.0) + 75 * 365 * 86_400 * S), // the year 2100
            usage_total: Some(30_000_000_000),
        });
        let u = utilisation_at(&c, 2, span(60), now).unwrap();
        assert_eq!(u.to, at(59.0));
        assert!((u.cores_used - 0.5).abs() < 1e-9, "{u:?}");
        // Within the slack, a host a little ahead is believed.
        let u = utilisation_at(&c, 2, span(60), at(59.0) - 60 * S).unwrap();
        assert_eq!(u.to, at(59.0));
        // All but one ahead: too few, and it says by how much.
        let future = container(&[(1000.0, 0.0), (1001.0, 1.0), (2.0, 0.0)]);
        assert_eq!(
            utilisation_at(&future, 2, span(60), at(2.0)),
            Err(NoReading::AheadOfClock {
                samples: 2,
                by_secs: 999
            })
        );
    }

    #[test]
    fn real_dd_agent_capture() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/cadvisor");
        if !dir.exists() {
            eprintln!("skipped: {} not found", dir.display());
            return;
        }
        let body = std::fs::read(dir.join("v1.2_subcontainers_datadog.json")).unwrap();
        let all = crate::source::cadvisor::parse_containers(&body).unwrap();
        let agent = all
            .iter()
            .find(|c| {
                c.aliases
                    .first()
                    .is_some_and(|a| a.starts_with("k8s_dd-agent."))
            })
            .unwrap();
        let u = utilisation(agent, 2, span(60)).unwrap();
        // 16:06:52.10 → 16:07:53.54: the span covers at least 60 s, from real timestamps.
        assert!(
            (61.0..62.0).contains(&((u.to - u.from) as f64 / 1e9)),
            "{u:?}"
        );
        assert!(u.cpu.is_finite() && u.cpu > 0.0 && u.cpu < 1.0, "{u:?}");
        // (1636943556502 − 1635742144956) ns over 61.44 s ≈ 0.0196 cores.
        assert!((u.cores_used - 0.01955).abs() < 0.0005, "{u:?}");
        let whole = utilisation(agent, 2, span(3600)).unwrap();
        assert!(whole.cpu.is_finite() && whole.cpu > 0.0 && whole.cpu < 1.0);
    }

    fn mark(t: f64, cpu_secs: f64) -> Option<Mark> {
        Some(Mark {
            t: at(t),
            usage: (cpu_secs * 1e9) as u64,
        })
    }

    /// The lean tick: a reading from the last tick's mark to a one-sample reply equals the
    /// reading over the whole window since that mark; the cases that give none say why.
    #[test]
    fn a_reading_from_a_mark_is_the_window_since_it() {
        let newest = container(&[(9.0, 115.0)]);
        let from_mark = utilisation_from_mark(&newest, mark(4.5, 104.5), 4, Nanos::MAX).unwrap();
        let whole = utilisation(&two_rates(), 4, Window::Since(at(4.5))).unwrap();
        assert_eq!(from_mark, whole);
        assert_eq!((from_mark.from, from_mark.to), (at(4.5), at(9.0)));
        // A longer reply (the first poll's) reads the same from the mark.
        let longer = utilisation_from_mark(&two_rates(), mark(4.5, 104.5), 4, Nanos::MAX);
        assert_eq!(longer, Ok(whole));

        // (reply, mark, reason)
        type Case<'a> = (&'a [(f64, f64)], Option<Mark>, NoReading);
        let cases: &[Case] = &[
            (&[(9.0, 115.0)], None, NoReading::FirstSample),
            (&[], None, NoReading::TooFewSamples),
            (&[(9.0, 115.0)], mark(9.0, 115.0), NoReading::NoNewSample),
            (&[(9.0, 115.0)], mark(10.0, 116.0), NoReading::ClockWentBack),
            // The container restarted: its counter is below the mark.
            (&[(9.0, 0.5)], mark(4.5, 104.5), NoReading::CounterReset),
            (&[], mark(4.5, 104.5), NoReading::TooFewSamples),
        ];
        for (points, m, why) in cases {
            let c = container(points);
            assert_eq!(
                utilisation_from_mark(&c, *m, 4, Nanos::MAX),
                Err(why.clone()),
                "{points:?} from {m:?}"
            );
        }
        // A jump beyond what 4 cores can do is impossible, as in a window.
        let jumped = container(&[(9.0, 104.5 + 4.5 * 4.0 * 2.0)]);
        assert!(matches!(
            utilisation_from_mark(&jumped, mark(4.5, 104.5), 4, Nanos::MAX),
            Err(NoReading::Impossible { .. })
        ));
    }

    /// The mark is the newest usable sample: not one without a counter, nor one dated far
    /// ahead of hatune's clock.
    #[test]
    fn the_mark_is_the_newest_usable_sample() {
        let mut c = two_rates();
        assert_eq!(newest_mark(&c, Nanos::MAX), mark(9.0, 115.0));
        c.samples.push(Sample {
            timestamp: Some(at(20.0)),
            usage_total: None,
        });
        c.samples.push(Sample {
            timestamp: Some(at(9.5 + FUTURE_SLACK.as_secs_f64() + 60.0)),
            usage_total: Some(200 * 1_000_000_000),
        });
        assert_eq!(newest_mark(&c, at(9.5)), mark(9.0, 115.0));
        assert_eq!(newest_mark(&container(&[]), Nanos::MAX), None);
    }
}
