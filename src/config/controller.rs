//! A `controller` object, top-level or a backend's: its JSON read into [`Overrides`], then
//! checked over the settings it inherits by [`Settings::new`]. Every error names
//! `{key}.{field}`.

use serde_json::Value;

use super::error::{err, ConfigError};
use super::json::reject_unknown;
use super::values::{duration_value, DURATION_MAX};
use crate::controller::{Mode, Overrides, Settings};

const KEYS: &[&str] = &[
    "gain",
    "min_weight",
    "max_weight",
    "deadband",
    "max_step",
    "mode",
    "hold",
    "freeze_below",
    "capacity_filter",
];

/// The settings the `controller` object `v` (at the key path `key`) gives: what it sets, over
/// `base`. A value of the wrong JSON type is reported before any range.
pub(super) fn settings(v: &Value, key: &str, base: &Settings) -> Result<Settings, ConfigError> {
    let obj = v
        .as_object()
        .ok_or_else(|| err(key, "must be an object of controller settings"))?;
    reject_unknown(obj, KEYS, &format!("{key}."))?;
    let path = |name: &str| format!("{key}.{name}");
    let number = |name: &str| -> Result<Option<f64>, ConfigError> {
        obj.get(name)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| err(path(name), format!("must be a number, not {v}")))
            })
            .transpose()
    };
    let integer = |name: &str| -> Result<Option<u32>, ConfigError> {
        obj.get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| err(path(name), format!("must be a whole number, not {v}")))
            })
            .transpose()
    };
    // In the order of the keys: the first wrong one is reported.
    let overrides = Overrides {
        gain: number("gain")?,
        min_weight: integer("min_weight")?,
        max_weight: integer("max_weight")?,
        deadband: number("deadband")?,
        max_step: number("max_step")?,
        mode: obj
            .get("mode")
            .map(|v| mode(v, &path("mode")))
            .transpose()?,
        hold: obj
            .get("hold")
            .map(|v| duration_value(v, &path("hold"), DURATION_MAX))
            .transpose()?,
        freeze_below: number("freeze_below")?,
        capacity_filter: number("capacity_filter")?,
    };
    Settings::new(base, &overrides).map_err(|e| err(path(e.field), e.message))
}

fn mode(v: &Value, key: &str) -> Result<Mode, ConfigError> {
    [Mode::Halfway, Mode::Capacity]
        .into_iter()
        .find(|m| v.as_str() == Some(m.as_str()))
        .ok_or_else(|| err(key, format!("must be \"halfway\" or \"capacity\", not {v}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The key path of a range error comes from the field `Settings::new` names.
    #[test]
    fn range_errors_name_the_key_path() {
        let base = Settings {
            max_weight: 4,
            ..Settings::default()
        };
        for (v, key, message) in [
            (
                json!({"gain": 0}),
                "backends[2].controller.gain",
                "0 is outside (0, 1]",
            ),
            (
                json!({"capacity_filter": 2}),
                "backends[2].controller.capacity_filter",
                "2 is outside (0, 1] (1 takes each new estimate as it is)",
            ),
            (
                json!({"min_weight": 10, "max_weight": 4}),
                "backends[2].controller.max_weight",
                "4 is outside min_weight..256 (10..256)",
            ),
            (
                json!({"min_weight": 10}),
                "backends[2].controller.min_weight",
                "10 is above max_weight 4 (inherited)",
            ),
        ] {
            let e = settings(&v, "backends[2].controller", &base).unwrap_err();
            assert_eq!((e.key.as_str(), e.message.as_str()), (key, message), "{v}");
        }
    }

    /// Every JSON type is checked before any range: a bad `gain` waits for a later `deadband`
    /// of the wrong type.
    #[test]
    fn types_before_ranges() {
        let base = Settings::default();
        let cases = [
            (
                json!({"gain": 0, "deadband": "2%"}),
                "controller.deadband",
                "must be a number, not \"2%\"",
            ),
            (
                json!({"gain": 0, "min_weight": 1.5}),
                "controller.min_weight",
                "must be a whole number, not 1.5",
            ),
            (
                json!({"max_weight": 0, "mode": "pid"}),
                "controller.mode",
                "must be \"halfway\" or \"capacity\", not \"pid\"",
            ),
            (
                json!({"freeze_below": 9, "hold": 30}),
                "controller.hold",
                "must be a duration string such as \"5s\" or \"1m 30s\", not 30",
            ),
            (
                json!({"max_step": 1, "capacity_filter": null}),
                "controller.capacity_filter",
                "must be a number, not null",
            ),
            (
                json!({"min_weight": 4294967296_u64}),
                "controller.min_weight",
                "must be a whole number, not 4294967296",
            ),
        ];
        for (v, key, message) in cases {
            let e = settings(&v, "controller", &base).unwrap_err();
            assert_eq!((e.key.as_str(), e.message.as_str()), (key, message), "{v}");
        }
    }

    #[test]
    fn mode_names() {
        let base = Settings::default();
        let s = settings(&json!({"mode": "capacity"}), "controller", &base).unwrap();
        assert_eq!(s.mode, Mode::Capacity);
        let s = settings(&json!({"mode": "halfway"}), "controller", &s).unwrap();
        assert_eq!(s.mode, Mode::Halfway);
        for bad in [json!("Capacity"), json!(1), json!(null)] {
            let e = settings(&json!({ "mode": bad }), "controller", &base).unwrap_err();
            assert_eq!(e.key, "controller.mode");
        }
    }
}
