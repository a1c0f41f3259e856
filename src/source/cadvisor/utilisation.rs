//! Pure arithmetic: cumulative CPU counters to utilisation over a window of samples.

use super::parse::ContainerInfo;
use super::{Nanos, NoReading, Utilisation, Window};

/// The kernel's default CFS period (100 ms, in µs), assumed when a quota comes without a period.
const DEFAULT_CFS_PERIOD_US: u64 = 100_000;

/// Utilisation of one container over `window`, from its sample timestamps (never an assumed
/// interval).
///
/// Samples are sorted by timestamp first; samples without a parseable timestamp or CPU counter
/// are skipped. The window ends at the newest sample and starts at:
/// - [`Window::Span`]`(d)`: the newest sample at or before `end − d` (so the span covers `d`),
///   else the oldest sample;
/// - [`Window::Since`]`(t)`: the newest sample at or before `t`, else the oldest sample.
///
/// Capacity is the CFS quota/period when a quota is set, else the cpuset size when narrower than
/// the machine, else `num_cores`. `spec.cpu.limit` (shares) is not a cap and is not used.
pub fn utilisation(
    c: &ContainerInfo,
    num_cores: u32,
    window: Window,
) -> Result<Utilisation, NoReading> {
    let mut samples: Vec<(Nanos, u64)> = c
        .samples
        .iter()
        .filter_map(|s| Some((s.timestamp?, s.usage_total?)))
        .collect();
    if samples.len() < 2 {
        return Err(NoReading::TooFewSamples);
    }
    // Stable sort: cAdvisor usually sends samples oldest first already, so this is cheap.
    samples.sort_by_key(|&(t, _)| t);

    let end = samples.len() - 1;
    let end_t = samples[end].0;
    let cutoff = match window {
        Window::Span(d) => end_t - Nanos::try_from(d.as_nanos()).unwrap_or(Nanos::MAX / 2),
        Window::Since(t) => t,
    };
    // Newest sample at or before the cutoff, else the oldest.
    let start = samples
        .partition_point(|&(t, _)| t <= cutoff)
        .saturating_sub(1);
    if start >= end {
        return Err(NoReading::TooFewSamples);
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
    Ok(Utilisation {
        cpu: cores_used / capacity_cores,
        cores_used,
        capacity_cores,
        from,
        to,
    })
}

/// Cores a container may use, or `None` when nothing bounds it and the machine size is unknown.
fn capacity(c: &ContainerInfo, num_cores: u32) -> Option<f64> {
    if let Some(quota) = c.cpu.quota.filter(|&q| q > 0) {
        let period = c
            .cpu
            .period
            .filter(|&p| p > 0)
            .unwrap_or(DEFAULT_CFS_PERIOD_US);
        return Some(quota as f64 / period as f64);
    }
    match c.cpu.cpuset_size {
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
    use crate::source::cadvisor::parse::{CpuSpec, Sample};
    use std::time::Duration;

    const S: Nanos = 1_000_000_000;
    const T0: Nanos = 1_700_000_000 * S;

    /// A container from (seconds after T0, cumulative CPU seconds) pairs.
    fn container(points: &[(f64, f64)]) -> ContainerInfo {
        ContainerInfo {
            name: "/docker/x".into(),
            aliases: vec!["x".into()],
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
        for w in [span(0), Window::Since(at(9.0)), Window::Since(at(1000.0))] {
            assert_eq!(
                utilisation(&c, 4, w),
                Err(NoReading::TooFewSamples),
                "{w:?}"
            );
        }
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

    #[test]
    fn huge_counters_stay_finite() {
        let mut c = container(&[(0.0, 0.0), (1.0, 0.0)]);
        c.samples[0].usage_total = Some(0);
        c.samples[1].usage_total = Some(u64::MAX);
        let u = utilisation(&c, 2, Window::Span(Duration::MAX)).unwrap();
        assert!(u.cpu.is_finite() && u.cores_used > 1e9);
        let u = utilisation(&c, 2, Window::Since(Nanos::MIN)).unwrap();
        assert!(u.cpu.is_finite());
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
}
