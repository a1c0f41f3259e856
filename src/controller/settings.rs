//! The controller's settings for one backend, and the rules they obey.
//!
//! [`Settings::new`] is the only way the config builds them: a backend's settings are the
//! top-level ones with its own [`Overrides`] on top, checked as a whole. Tests and benches
//! build [`Settings`] directly, from [`Settings::default`] and struct-update syntax.

use std::fmt::Display;
use std::ops::Bound::{Excluded, Included};
use std::ops::RangeBounds;
use std::time::Duration;

/// The controller's settings for one backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Share of the way each weight moves toward its balancing weight per tick (0 < gain ≤ 1).
    pub gain: f64,
    /// Weights never go below this (≥ 1: hatune never drains a server).
    pub min_weight: u32,
    /// The largest weight of a backend is scaled to this (≤ 256, HAProxy's limit).
    pub max_weight: u32,
    /// Relative weight changes smaller than this are not sent.
    pub deadband: f64,
    /// A weight changes by at most this factor per tick (up or down).
    pub max_step: f64,
    /// How the weight each server should have is estimated.
    pub mode: Mode,
    /// A server without a reading keeps its share this long, then falls back to the mean
    /// weight of the backend.
    pub hold: Duration,
    /// When fewer than this share of the servers that could take part have a reading, the
    /// whole backend is frozen (nothing moves): the readings left are not a fair sample.
    pub freeze_below: f64,
    /// Capacity mode: weight of the newest capacity estimate in the running one (1 = no
    /// filtering). An estimate off by more than [`CAPACITY_JUMP`] replaces it outright.
    pub capacity_filter: f64,
}

/// A capacity estimate further than this from the filtered one (relative) is a real change
/// (a host lost cores, a noisy neighbour arrived): the filter restarts from it.
pub const CAPACITY_JUMP: f64 = 0.15;

/// How the controller finds the weight each server should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `"halfway"`: each weight moves `gain` of the way toward `w × mean / cpu`.
    #[default]
    Halfway,
    /// `"capacity"`: each server's capacity is estimated as the requests it served (HAProxy's
    /// own counters) per unit of utilisation over the same window, filtered over ticks;
    /// weights are made proportional to it in one step. Needs two readings of the counters:
    /// in one-shot mode, and on a daemon's first tick, it falls back to the halfway rule.
    Capacity,
}

impl Mode {
    /// The name used in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Halfway => "halfway",
            Mode::Capacity => "capacity",
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gain: 0.5,
            min_weight: 1,
            max_weight: 256,
            deadband: 0.02,
            max_step: 2.0,
            mode: Mode::Halfway,
            hold: Duration::from_secs(600),
            freeze_below: 0.5,
            capacity_filter: 0.5,
        }
    }
}

/// What one config object sets: each `Some` replaces the base's value, each `None` inherits
/// it. Which fields are set also decides which one a min/max conflict is blamed on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Overrides {
    pub gain: Option<f64>,
    pub min_weight: Option<u32>,
    pub max_weight: Option<u32>,
    pub deadband: Option<f64>,
    pub max_step: Option<f64>,
    pub mode: Option<Mode>,
    pub hold: Option<Duration>,
    pub freeze_below: Option<f64>,
    pub capacity_filter: Option<f64>,
}

/// A setting out of its range: the field (as the config names it) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// `"gain"`, `"min_weight"`, ...
    pub field: &'static str,
    pub message: String,
}

impl Settings {
    /// `overrides` applied over `base`, then every range checked on the result, inherited
    /// values included (a `min_weight` set here must fit the inherited `max_weight`). The first
    /// field out of range, in field order, is the error. `hold` has no range here: the config
    /// bounds it where it parses the text.
    pub fn new(base: &Settings, overrides: &Overrides) -> Result<Settings, SettingsError> {
        let o = overrides;
        let s = Settings {
            gain: o.gain.unwrap_or(base.gain),
            min_weight: o.min_weight.unwrap_or(base.min_weight),
            max_weight: o.max_weight.unwrap_or(base.max_weight),
            deadband: o.deadband.unwrap_or(base.deadband),
            max_step: o.max_step.unwrap_or(base.max_step),
            mode: o.mode.unwrap_or(base.mode),
            hold: o.hold.unwrap_or(base.hold),
            freeze_below: o.freeze_below.unwrap_or(base.freeze_below),
            capacity_filter: o.capacity_filter.unwrap_or(base.capacity_filter),
        };
        within("gain", s.gain, (Excluded(0.0), Included(1.0)), "(0, 1]")?;
        within(
            "min_weight",
            s.min_weight,
            1..=256,
            "1..256 (hatune never sets weight 0: that is the operator's drain)",
        )?;
        // max_weight lies in min_weight..=256. Name the key this object sets: the other may be
        // inherited from the top level.
        if o.max_weight.is_some() || o.min_weight.is_none() {
            within(
                "max_weight",
                s.max_weight,
                s.min_weight..=256,
                format!("min_weight..256 ({}..256)", s.min_weight),
            )?;
        } else if !(s.min_weight..=256).contains(&s.max_weight) {
            return Err(SettingsError {
                field: "min_weight",
                message: format!(
                    "{} is above max_weight {} (inherited)",
                    s.min_weight, s.max_weight
                ),
            });
        }
        within("deadband", s.deadband, 0.0..0.5, "[0, 0.5)")?;
        within(
            "max_step",
            s.max_step,
            (Excluded(1.0), Included(100.0)),
            "(1, 100]",
        )?;
        within(
            "freeze_below",
            s.freeze_below,
            0.0..=1.0,
            "[0, 1] (a share of the servers; 0 never freezes)",
        )?;
        within(
            "capacity_filter",
            s.capacity_filter,
            (Excluded(0.0), Included(1.0)),
            "(0, 1] (1 takes each new estimate as it is)",
        )?;
        Ok(s)
    }
}

/// `Ok` when `value` lies in `allowed` (NaN never does); else "`value` is outside `shown`",
/// `shown` being `allowed` as the operator reads it.
fn within<T: PartialOrd + Display>(
    field: &'static str,
    value: T,
    allowed: impl RangeBounds<T>,
    shown: impl Display,
) -> Result<(), SettingsError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(SettingsError {
            field,
            message: format!("{value} is outside {shown}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(o: Overrides) -> Result<Settings, SettingsError> {
        Settings::new(&Settings::default(), &o)
    }

    /// Table: each bound, just inside and just outside, with the message word for word.
    #[test]
    fn each_bound() {
        let none = Overrides::default();
        let cases: &[(Overrides, Option<(&str, &str)>)] = &[
            (Overrides { gain: Some(1.0), ..none }, None),
            (Overrides { gain: Some(1e-9), ..none }, None),
            (
                Overrides { gain: Some(0.0), ..none },
                Some(("gain", "0 is outside (0, 1]")),
            ),
            (
                Overrides { gain: Some(1.5), ..none },
                Some(("gain", "1.5 is outside (0, 1]")),
            ),
            (
                Overrides { gain: Some(f64::NAN), ..none },
                Some(("gain", "NaN is outside (0, 1]")),
            ),
            (Overrides { min_weight: Some(1), ..none }, None),
            (
                Overrides { min_weight: Some(0), ..none },
                Some((
                    "min_weight",
                    "0 is outside 1..256 (hatune never sets weight 0: that is the operator's drain)",
                )),
            ),
            (
                Overrides { min_weight: Some(257), ..none },
                Some((
                    "min_weight",
                    "257 is outside 1..256 (hatune never sets weight 0: that is the operator's drain)",
                )),
            ),
            (Overrides { max_weight: Some(256), ..none }, None),
            (Overrides { max_weight: Some(1), ..none }, None),
            (
                Overrides { max_weight: Some(257), ..none },
                Some(("max_weight", "257 is outside min_weight..256 (1..256)")),
            ),
            (
                Overrides { max_weight: Some(0), ..none },
                Some(("max_weight", "0 is outside min_weight..256 (1..256)")),
            ),
            (Overrides { deadband: Some(0.0), ..none }, None),
            (Overrides { deadband: Some(0.499), ..none }, None),
            (
                Overrides { deadband: Some(0.5), ..none },
                Some(("deadband", "0.5 is outside [0, 0.5)")),
            ),
            (
                Overrides { deadband: Some(-0.01), ..none },
                Some(("deadband", "-0.01 is outside [0, 0.5)")),
            ),
            (Overrides { max_step: Some(100.0), ..none }, None),
            (Overrides { max_step: Some(1.001), ..none }, None),
            (
                Overrides { max_step: Some(1.0), ..none },
                Some(("max_step", "1 is outside (1, 100]")),
            ),
            (
                Overrides { max_step: Some(100.5), ..none },
                Some(("max_step", "100.5 is outside (1, 100]")),
            ),
            (Overrides { freeze_below: Some(0.0), ..none }, None),
            (Overrides { freeze_below: Some(1.0), ..none }, None),
            (
                Overrides { freeze_below: Some(1.5), ..none },
                Some((
                    "freeze_below",
                    "1.5 is outside [0, 1] (a share of the servers; 0 never freezes)",
                )),
            ),
            (
                Overrides { freeze_below: Some(-0.1), ..none },
                Some((
                    "freeze_below",
                    "-0.1 is outside [0, 1] (a share of the servers; 0 never freezes)",
                )),
            ),
            (Overrides { capacity_filter: Some(1.0), ..none }, None),
            (
                Overrides { capacity_filter: Some(0.0), ..none },
                Some((
                    "capacity_filter",
                    "0 is outside (0, 1] (1 takes each new estimate as it is)",
                )),
            ),
            (
                Overrides { capacity_filter: Some(1.1), ..none },
                Some((
                    "capacity_filter",
                    "1.1 is outside (0, 1] (1 takes each new estimate as it is)",
                )),
            ),
            // Neither mode nor hold has a range here.
            (Overrides { mode: Some(Mode::Capacity), ..none }, None),
            (Overrides { hold: Some(Duration::ZERO), ..none }, None),
        ];
        for (o, want) in cases {
            let got = apply(*o);
            match want {
                None => assert!(got.is_ok(), "{o:?}: {got:?}"),
                Some((field, message)) => {
                    let e = got.expect_err(&format!("{o:?}"));
                    assert_eq!((e.field, e.message.as_str()), (*field, *message), "{o:?}");
                }
            }
        }
    }

    /// The first field out of range is the one reported, in the order of the struct.
    #[test]
    fn the_first_bad_field_is_reported() {
        let e = apply(Overrides {
            capacity_filter: Some(0.0),
            deadband: Some(0.9),
            gain: Some(2.0),
            ..Overrides::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "gain");
        assert_eq!(e.to_string(), "gain: 2 is outside (0, 1]");
    }

    /// What an object does not set comes from `base`; what it sets replaces it.
    #[test]
    fn unset_fields_are_inherited() {
        let base = Settings {
            gain: 0.3,
            min_weight: 4,
            max_weight: 200,
            mode: Mode::Capacity,
            hold: Duration::from_secs(90),
            ..Settings::default()
        };
        assert_eq!(Settings::new(&base, &Overrides::default()), Ok(base));
        let s = Settings::new(
            &base,
            &Overrides {
                gain: Some(0.7),
                deadband: Some(0.1),
                mode: Some(Mode::Halfway),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            s,
            Settings {
                gain: 0.7,
                deadband: 0.1,
                mode: Mode::Halfway,
                ..base
            }
        );
        let every = Overrides {
            gain: Some(1.0),
            min_weight: Some(2),
            max_weight: Some(3),
            deadband: Some(0.0),
            max_step: Some(4.0),
            mode: Some(Mode::Halfway),
            hold: Some(Duration::from_secs(5)),
            freeze_below: Some(0.0),
            capacity_filter: Some(1.0),
        };
        let s = Settings::new(&base, &every).unwrap();
        assert_eq!(
            s,
            Settings {
                gain: 1.0,
                min_weight: 2,
                max_weight: 3,
                deadband: 0.0,
                max_step: 4.0,
                mode: Mode::Halfway,
                hold: Duration::from_secs(5),
                freeze_below: 0.0,
                capacity_filter: 1.0,
            }
        );
        // Inherited values are checked too.
        let bad_base = Settings {
            deadband: 0.7,
            ..Settings::default()
        };
        assert_eq!(
            Settings::new(&bad_base, &Overrides::default())
                .unwrap_err()
                .field,
            "deadband"
        );
    }

    /// Table: a min/max conflict names the key this object sets; the other may be inherited.
    #[test]
    fn min_max_conflict_names_the_key_set_here() {
        let base = |min, max| Settings {
            min_weight: min,
            max_weight: max,
            ..Settings::default()
        };
        let set = |min_weight, max_weight| Overrides {
            min_weight,
            max_weight,
            ..Overrides::default()
        };
        let cases = [
            // Only min_weight set here, max inherited: min_weight is to blame.
            (
                base(1, 4),
                set(Some(10), None),
                "min_weight",
                "10 is above max_weight 4 (inherited)",
            ),
            // Only max_weight set here.
            (
                base(10, 256),
                set(None, Some(4)),
                "max_weight",
                "4 is outside min_weight..256 (10..256)",
            ),
            // Both set here: max_weight.
            (
                base(1, 256),
                set(Some(10), Some(4)),
                "max_weight",
                "4 is outside min_weight..256 (10..256)",
            ),
            // Neither set here (a bad base): max_weight.
            (
                base(10, 4),
                set(None, None),
                "max_weight",
                "4 is outside min_weight..256 (10..256)",
            ),
        ];
        for (b, o, field, message) in cases {
            let e = Settings::new(&b, &o).expect_err(&format!("{b:?} {o:?}"));
            assert_eq!((e.field, e.message.as_str()), (field, message), "{o:?}");
        }
        // Equal is fine, whichever is set here.
        let s = Settings::new(&base(1, 4), &set(Some(4), None)).unwrap();
        assert_eq!((s.min_weight, s.max_weight), (4, 4));
        let s = Settings::new(&base(4, 256), &set(None, Some(4))).unwrap();
        assert_eq!((s.min_weight, s.max_weight), (4, 4));
    }
}
