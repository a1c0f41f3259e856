//! The simulation bench: hatune's controller (`controller::decide`, the code the daemon runs)
//! driven by a model plant, thousands of runs in a few seconds. No I/O, no timing.
//!
//! The plant: HAProxy splits a constant load by weight (share = w / Σw); a server's true
//! utilisation is share × load / cores; the CPU reading is the mean utilisation over the last
//! `window` control periods, times (1 + noise × N(0,1)); weights are integers. Capacity mode
//! also sees the requests each server served over the same window (HAProxy's counters), and
//! runs the same filter as the daemon ([`controller::filter_capacity`]); like the daemon, it has
//! no counters on its first tick.
//!
//! `cargo bench --bench simulate` prints, per controller setting and fleet size (4, 20, 50, 200
//! servers): ticks until max/mean stays ≤ 1.05, steady-state max/mean, overshoot, and the event
//! scenarios. The 2015 tool (halfway, weights rescaled to sum to ~100 and rounded up) runs on
//! the same plant for comparison.

use std::time::{Duration, Instant};

use hatune::controller::{self, Input, Mode, Reason, ServerInput, Settings};

const SEEDS: u64 = 40;
const TICKS: usize = 40;
const EVENT_AT: usize = 20;
const SIZES: [usize; 4] = [4, 20, 50, 200];

#[derive(Clone, Copy)]
enum Controller {
    Hatune(Settings),
    Tool2015,
}

#[derive(Clone, Copy, PartialEq)]
enum Event {
    None,
    /// The largest host loses half its cores at EVENT_AT.
    LoseCores,
    /// One host's telemetry is missing for 10 ticks from EVENT_AT.
    Outage,
    /// An operator drains server 0 at EVENT_AT.
    Drain,
}

struct Scenario {
    noise: f64,
    window: usize,
    event: Event,
}

struct Run {
    /// max/mean of true utilisation after each tick's weights applied (index 0: the start).
    ratios: Vec<f64>,
    overshoot: f64,
    drained_weight_kept: bool,
}

fn rng(seed: u64) -> impl FnMut() -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    // Box–Muller: a standard normal.
    move || {
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn cores(n: usize) -> Vec<f64> {
    if n == 4 {
        return vec![1.0, 1.0, 2.0, 4.0];
    }
    (0..n)
        .map(|i| [1.0, 2.0, 4.0, 8.0, 2.0, 1.0][i % 6])
        .collect()
}

fn simulate(n: usize, ctl: Controller, sc: &Scenario, seed: u64) -> Run {
    let mut normal = rng(seed * 7919 + n as u64);
    let mut cores = cores(n);
    let load = 0.5 * cores.iter().sum::<f64>();
    let mut weights = vec![100u32; n];
    let mut capacity: Vec<Option<f64>> = vec![None; n];
    let mut history: Vec<Vec<f64>> = vec![]; // true utilisation per period
    let mut served: Vec<Vec<f64>> = vec![]; // requests per period (load units)
    let mut ratios = vec![];
    let mut overshoot: f64 = 0.0;
    let mut initial_sign = vec![0.0; n];
    let mut drained = false;
    let mut drained_weight_kept = true;
    let largest = (0..n)
        .max_by(|&a, &b| cores[a].total_cmp(&cores[b]))
        .unwrap_or(0);
    for tick in 0..=TICKS {
        if tick == EVENT_AT {
            match sc.event {
                Event::LoseCores => cores[largest] /= 2.0,
                Event::Drain => drained = true,
                _ => {}
            }
        }
        // The period that follows the weights of the last tick.
        let serving: Vec<bool> = (0..n).map(|i| !(drained && i == 0)).collect();
        let total: f64 = (0..n)
            .filter(|&i| serving[i])
            .map(|i| f64::from(weights[i]))
            .sum();
        let share: Vec<f64> = (0..n)
            .map(|i| {
                if serving[i] {
                    f64::from(weights[i]) / total
                } else {
                    0.0
                }
            })
            .collect();
        let util: Vec<f64> = (0..n).map(|i| share[i] * load / cores[i]).collect();
        let live: Vec<f64> = (0..n).filter(|&i| serving[i]).map(|i| util[i]).collect();
        let mean = live.iter().sum::<f64>() / live.len() as f64;
        let max = live.iter().cloned().fold(0.0, f64::max);
        ratios.push(max / mean);
        for i in 0..n {
            let e = (util[i] - mean) / mean;
            if tick == 0 {
                initial_sign[i] = e.signum();
            } else if tick < EVENT_AT && serving[i] {
                overshoot = overshoot.max(-initial_sign[i] * e);
            }
        }
        history.push(util);
        served.push(share.iter().map(|s| s * load).collect());
        if tick == TICKS {
            break;
        }

        // The reading: the mean over the last `window` periods, with noise.
        let from = history.len().saturating_sub(sc.window);
        let span = (history.len() - from) as f64;
        let outage = sc.event == Event::Outage && (EVENT_AT..EVENT_AT + 10).contains(&tick);
        let inputs: Vec<ServerInput> = (0..n)
            .map(|i| {
                let cpu: f64 = history[from..].iter().map(|h| h[i]).sum::<f64>() / span;
                let reading = cpu * (1.0 + sc.noise * normal());
                let input = if drained && i == 0 {
                    Input::Excluded(Reason::Drain)
                } else if outage && i == largest {
                    Input::NoData(Reason::NoContainer)
                } else {
                    Input::Measured(reading.max(0.0))
                };
                if let (Controller::Hatune(s), Input::Measured(r)) = (ctl, &input) {
                    let requests: f64 = served[from..].iter().map(|h| h[i]).sum();
                    // The daemon has no counters to compare on its first tick.
                    if s.mode == Mode::Capacity && tick > 0 && *r > 0.0 {
                        capacity[i] =
                            Some(controller::filter_capacity(capacity[i], requests / r, &s));
                    }
                }
                let mut si = ServerInput::new(format!("s{i:03}"), weights[i], input);
                si.capacity = capacity[i];
                if outage && i == largest {
                    si.outage = Some(Duration::from_secs(30 * (tick - EVENT_AT) as u64));
                }
                si
            })
            .collect();
        let before = weights[0];
        match ctl {
            Controller::Hatune(s) => {
                for (w, d) in weights.iter_mut().zip(controller::decide(&inputs, &s)) {
                    *w = d.proposed;
                }
            }
            Controller::Tool2015 => tool_2015(&mut weights, &inputs),
        }
        if drained && weights[0] != before {
            drained_weight_kept = false;
        }
    }
    Run {
        ratios,
        overshoot,
        drained_weight_kept,
    }
}

/// haproxy_cadvisor.py: halfway toward `w × avg / cpu`, rescaled to sum to about 100, rounded
/// up, floored at 1; it tunes every server it sees (it ignores DRAIN) and divides by zero
/// without data (modelled here as keeping the weight).
fn tool_2015(weights: &mut [u32], inputs: &[ServerInput]) {
    let cpus: Vec<f64> = inputs
        .iter()
        .filter_map(|s| match s.input {
            Input::Measured(c) => Some(c),
            _ => None,
        })
        .collect();
    let avg = cpus.iter().sum::<f64>() / cpus.len() as f64;
    let new: Vec<f64> = inputs
        .iter()
        .map(|s| {
            let w = f64::from(s.weight);
            match s.input {
                Input::Measured(c) if c > 0.0 => w + (w * avg / c - w) / 2.0,
                _ => w,
            }
        })
        .collect();
    let sum: f64 = new.iter().sum();
    for (w, x) in weights.iter_mut().zip(new) {
        *w = ((x * 100.0 / sum).ceil() as u32).max(1);
    }
}

/// First tick from which max/mean stays ≤ 1.05 over `ticks`, counted from `start`.
fn settles(ratios: &[f64], start: usize) -> Option<usize> {
    let r = &ratios[start..];
    (0..r.len()).find(|&k| r[k..].iter().all(|&x| x <= 1.05))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn fmt_ticks(v: Vec<Option<usize>>) -> String {
    if v.iter().any(Option::is_none) {
        let ok = v.iter().filter(|x| x.is_some()).count();
        return format!("never ({ok}/{})", v.len());
    }
    let v: Vec<f64> = v.into_iter().map(|x| x.unwrap_or(0) as f64).collect();
    let worst = v.iter().cloned().fold(0.0, f64::max);
    format!("{:.0} (≤{worst:.0})", median(v))
}

fn main() {
    let started = Instant::now();
    let mut runs = 0usize;
    let halfway = Settings::default();
    let capacity = Settings {
        mode: Mode::Capacity,
        ..halfway
    };
    let settings: Vec<(&str, Controller)> = vec![
        ("halfway (default)", Controller::Hatune(halfway)),
        (
            "halfway, gain 1",
            Controller::Hatune(Settings {
                gain: 1.0,
                ..halfway
            }),
        ),
        (
            "halfway, gain 0.25",
            Controller::Hatune(Settings {
                gain: 0.25,
                ..halfway
            }),
        ),
        ("capacity", Controller::Hatune(capacity)),
        (
            "capacity, filter 0.25",
            Controller::Hatune(Settings {
                capacity_filter: 0.25,
                ..capacity
            }),
        ),
        (
            "capacity, filter 1",
            Controller::Hatune(Settings {
                capacity_filter: 1.0,
                ..capacity
            }),
        ),
        ("2015 tool", Controller::Tool2015),
    ];
    let mut many = |n: usize, ctl: Controller, sc: &Scenario| -> Vec<Run> {
        runs += SEEDS as usize;
        (0..SEEDS).map(|seed| simulate(n, ctl, sc, seed)).collect()
    };

    println!(
        "Simulation: load split by weight, cpu = share × load / cores, mean utilisation 50%, \
         equal starting weights; {SEEDS} seeds per cell, median (worst) ticks. Cores: 1,1,2,4 for \
         4 servers, else 1,2,4,8,2,1 repeated.\n"
    );
    let scenarios: [(&str, Scenario); 4] = [
        (
            "2% noise, CPU window = 1 control period",
            Scenario {
                noise: 0.02,
                window: 1,
                event: Event::None,
            },
        ),
        (
            "5% noise, CPU window = 1 control period",
            Scenario {
                noise: 0.05,
                window: 1,
                event: Event::None,
            },
        ),
        (
            "2% noise, CPU window = 2 control periods (cron every 30 s, 60 s window)",
            Scenario {
                noise: 0.02,
                window: 2,
                event: Event::None,
            },
        ),
        (
            "2% noise, CPU window = 4 control periods",
            Scenario {
                noise: 0.02,
                window: 4,
                event: Event::None,
            },
        ),
    ];
    for (title, sc) in &scenarios {
        println!("## {title}");
        println!(
            "| setting | servers | start max/mean | ticks to stay ≤ 1.05 | steady max/mean (ticks 20-40) | overshoot |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, ctl) in &settings {
            for n in SIZES {
                let r = many(n, *ctl, sc);
                let ticks = r.iter().map(|r| settles(&r.ratios, 0)).collect();
                let steady: Vec<f64> = r.iter().map(|r| mean(&r.ratios[EVENT_AT..])).collect();
                let over: Vec<f64> = r.iter().map(|r| r.overshoot).collect();
                println!(
                    "| {name} | {n} | {:.3} | {} | {:.4} | {:.1}% |",
                    r[0].ratios[0],
                    fmt_ticks(ticks),
                    mean(&steady),
                    100.0 * median(over),
                );
            }
        }
        println!();
    }

    println!("## Quantisation: no noise, deadband 0 (halfway) — the error integer weights leave");
    println!("| setting | servers | steady max/mean |");
    println!("|---|---:|---:|");
    let exact = Scenario {
        noise: 0.0,
        window: 1,
        event: Event::None,
    };
    for (name, ctl) in [
        (
            "hatune, largest weight 256",
            Controller::Hatune(Settings {
                deadband: 0.0,
                ..halfway
            }),
        ),
        ("2015 tool, weights sum to ~100", Controller::Tool2015),
    ] {
        for n in SIZES {
            let r = many(n, ctl, &exact);
            println!("| {name} | {n} | {:.4} |", mean(&r[0].ratios[EVENT_AT..]));
        }
    }
    println!();

    println!("## Events at tick {EVENT_AT} (2% noise, window = 1 period)");
    println!(
        "| setting | servers | largest host loses half its cores: ticks to stay ≤ 1.05 | one host without telemetry for 10 ticks: worst max/mean | operator drains a server: weight kept, rest steady max/mean |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, ctl) in &settings {
        for n in SIZES {
            let lose = many(
                n,
                *ctl,
                &Scenario {
                    noise: 0.02,
                    window: 1,
                    event: Event::LoseCores,
                },
            );
            let lose_ticks = lose
                .iter()
                .map(|r| settles(&r.ratios, EVENT_AT + 1).map(|k| k + 1))
                .collect();
            let outage = many(
                n,
                *ctl,
                &Scenario {
                    noise: 0.02,
                    window: 1,
                    event: Event::Outage,
                },
            );
            let worst = outage
                .iter()
                .map(|r| {
                    r.ratios[EVENT_AT..=EVENT_AT + 10]
                        .iter()
                        .cloned()
                        .fold(0.0, f64::max)
                })
                .fold(0.0, f64::max);
            let drain = many(
                n,
                *ctl,
                &Scenario {
                    noise: 0.02,
                    window: 1,
                    event: Event::Drain,
                },
            );
            let kept = drain.iter().all(|r| r.drained_weight_kept);
            let kept = match ctl {
                Controller::Tool2015 => "n/a (it ignores DRAIN),",
                _ if kept => "kept,",
                _ => "CHANGED,",
            };
            let rest: Vec<f64> = drain.iter().map(|r| mean(&r.ratios[30..])).collect();
            println!(
                "| {name} | {n} | {} | {worst:.3} | {kept} {:.4} |",
                fmt_ticks(lose_ticks),
                mean(&rest)
            );
        }
    }
    println!(
        "\n{runs} simulated runs of {TICKS} ticks in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
