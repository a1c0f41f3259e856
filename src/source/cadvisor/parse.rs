//! Pure parsing of cAdvisor replies: RFC 3339 timestamps, ContainerInfo lists and MachineInfo.
//!
//! The container parser is lenient by construction: every field is read through [`Lenient`], which
//! accepts any JSON value and falls back to "absent" when the type is wrong. A syntax error fails
//! the whole body (nothing else can be trusted then), but a container whose `stats` hold a string,
//! whose counter overflows u64 or whose timestamp is garbage only loses that sample or container.
//! Only the fields a reading needs are kept; everything else is skipped without allocating.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::Nanos;
pub use crate::source::rate::{ContainerInfo, CpuSpec, Sample, MAX_CORES};

/// Parses an RFC 3339 timestamp as Go's `time.Time` marshals it (`2016-06-17T16:06:04.78767617Z`,
/// or with a local offset such as `+02:00`) into nanoseconds since the Unix epoch.
///
/// Accepts 0 to 9 fraction digits, `Z`/`z` or `±HH:MM`, `T`/`t` between date and time. Returns
/// `None` for anything else (including out-of-range fields such as month 13 or Feb 30).
pub fn parse_rfc3339(s: &str) -> Option<Nanos> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 9 {
            return None;
        }
        nanos = digits(b, start, n)?;
        nanos *= 10i64.pow((9 - n) as u32);
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2)?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(Nanos::from(secs) * 1_000_000_000 + Nanos::from(nanos))
}

/// Formats nanoseconds since the epoch the way Go's `RFC3339Nano` does: UTC, `Z`, trailing
/// fraction zeros trimmed. The inverse of [`parse_rfc3339`] (used by the fake cAdvisor).
pub fn format_rfc3339(t: Nanos) -> String {
    let secs = t.div_euclid(1_000_000_000) as i64;
    let frac = t.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!("{frac:09}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// `n` ASCII digits at `at` as a number, or `None` if any is not a digit.
fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let slice = b.get(at..at + n)?;
    slice.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Number of CPUs in a cpuset list such as `0-1,4` (3). `None` when it does not parse or is
/// empty, so a garbled mask never narrows the capacity.
pub fn cpuset_size(mask: &str) -> Option<u32> {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for part in mask.trim().split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
            None => {
                let v: u32 = part.parse().ok()?;
                (v, v)
            }
        };
        if lo > hi {
            return None;
        }
        ranges.push((lo, hi));
    }
    // Overlaps ("0-3,2-5") are legal in a cpuset list; count each CPU once.
    ranges.sort_unstable();
    let mut count: u64 = 0;
    let mut covered_to: Option<u32> = None;
    for (lo, hi) in ranges {
        let lo = match covered_to {
            Some(c) if c >= hi => continue,
            Some(c) if c >= lo => c + 1,
            _ => lo,
        };
        count += u64::from(hi - lo) + 1;
        covered_to = Some(hi);
    }
    u32::try_from(count).ok().filter(|&c| c > 0)
}

/// Parses a list of containers: the `/api/v1.3/docker/` reply (an object keyed by cgroup name)
/// or the subcontainers form (an array of ContainerInfo).
///
/// Fails only when the body is not JSON, or is JSON but neither an object nor an array; entries
/// that are not objects are skipped, and wrongly typed fields inside an entry read as absent.
/// Labels are skipped unread (see [`parse_containers_with_labels`]).
pub fn parse_containers(body: &[u8]) -> Result<Vec<ContainerInfo>, String> {
    parse_list::<RawContainer>(body)
}

/// [`parse_containers`], keeping every label whose value is a string (`spec.labels`): for
/// backends whose templates read labels.
pub fn parse_containers_with_labels(body: &[u8]) -> Result<Vec<ContainerInfo>, String> {
    parse_list::<RawContainerLabelled>(body)
}

fn parse_list<'de, T: Lenient<'de> + IntoInfo>(
    body: &'de [u8],
) -> Result<Vec<ContainerInfo>, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let out = de
        .deserialize_any(ContainerListVisitor::<T>(PhantomData))
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads `num_cores` from a `/api/v1.3/machine` reply: a JSON object. A count beyond
/// [`MAX_CORES`] is an error (it would make every container look idle).
pub fn parse_num_cores(body: &[u8]) -> Result<u32, String> {
    #[derive(Deserialize)]
    struct Machine {
        num_cores: u32,
    }
    // serde reads a struct from an array too (`[4]` would be 4 cores): only an object is
    // MachineInfo.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'[') {
        return Err("a JSON array, not MachineInfo (an object)".to_string());
    }
    let n = serde_json::from_slice::<Machine>(body)
        .map(|m| m.num_cores)
        .map_err(|e| e.to_string())?;
    if n > MAX_CORES {
        return Err(format!(
            "num_cores {n} is more than any machine has (at most {MAX_CORES})"
        ));
    }
    Ok(n)
}

struct ContainerListVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de> + IntoInfo> Visitor<'de> for ContainerListVisitor<T> {
    type Value = Vec<ContainerInfo>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object keyed by container name or an array of containers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(key) = map.next_key::<L<Str>>()? {
            if let Some(raw) = map.next_value::<L<Obj<T>>>()?.0 .0 {
                out.push(raw.into_info(key.0 .0));
            }
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16));
        while let Some(item) = seq.next_element::<L<Obj<T>>>()? {
            if let Some(raw) = item.0 .0 {
                out.push(raw.into_info(None));
            }
        }
        Ok(out)
    }
}

/// A type that can be read from any JSON value: the wrong type gives `Default`, never an error.
/// Only syntax errors (from the underlying deserializer) propagate.
trait Lenient<'de>: Default {
    fn from_u64(_: u64) -> Self {
        Self::default()
    }
    fn from_i64(_: i64) -> Self {
        Self::default()
    }
    fn from_f64(_: f64) -> Self {
        Self::default()
    }
    fn from_str(_: &str) -> Self {
        Self::default()
    }
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
}

/// Deserialize adapter for any [`Lenient`] type.
struct L<T>(T);

impl<'de, T: Lenient<'de>> Deserialize<'de> for L<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LVisitor(PhantomData)).map(L)
    }
}

struct LVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de>> Visitor<'de> for LVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(T::from_i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from_u64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Ok(T::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::from_str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::from_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::from_seq(seq)
    }
}

/// A non-negative integer that fits u64.
#[derive(Default)]
struct Num(Option<u64>);

impl Lenient<'_> for Num {
    fn from_u64(v: u64) -> Self {
        Num(Some(v))
    }
    fn from_i64(v: i64) -> Self {
        Num(u64::try_from(v).ok())
    }
    fn from_f64(v: f64) -> Self {
        // serde_json hands integers beyond u64 over as f64; those are not a usable counter.
        Num((v.is_finite() && (0.0..18_446_744_073_709_551_616.0).contains(&v)).then_some(v as u64))
    }
}

#[derive(Default)]
struct Str(Option<String>);

impl Lenient<'_> for Str {
    fn from_str(v: &str) -> Self {
        Str(Some(v.to_owned()))
    }
}

/// A timestamp, parsed straight from the (usually borrowed) JSON string.
#[derive(Default)]
struct Ts(Option<Nanos>);

impl Lenient<'_> for Ts {
    fn from_str(v: &str) -> Self {
        Ts(parse_rfc3339(v))
    }
}

/// A cpuset mask, reduced to its size.
#[derive(Default)]
struct Mask(Option<u32>);

impl Lenient<'_> for Mask {
    fn from_str(v: &str) -> Self {
        Mask(cpuset_size(v))
    }
}

/// An array; anything else reads as empty.
struct List<T>(Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Lenient<'de>> Lenient<'de> for List<T> {
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        // Cap the hint: it comes from the input and must not drive a huge allocation.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
        while let Some(L(v)) = seq.next_element::<L<T>>()? {
            out.push(v);
        }
        Ok(List(out))
    }
}

/// An object of strings (labels); values that are not strings are skipped, the last duplicate
/// key wins, and anything but an object reads as empty.
#[derive(Default)]
struct StrMap(BTreeMap<String, String>);

impl<'de> Lenient<'de> for StrMap {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            if let Str(Some(value)) = map.next_value::<L<Str>>()?.0 {
                out.insert(key, value);
            }
        }
        Ok(StrMap(out))
    }
}

/// An object, or `None` when the value is not one.
struct Obj<T>(Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Lenient<'de>> Lenient<'de> for Obj<T> {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::from_map(map).map(|v| Obj(Some(v)))
    }
}

/// Implements [`Lenient::from_map`] for a struct: known keys are read leniently (the last
/// duplicate wins), unknown keys skipped. `$field` names the JSON key and the struct field.
macro_rules! lenient_struct {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Default)]
        struct $name {
            $($field: $ty),*
        }

        impl<'de> Lenient<'de> for $name {
            fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
                const FIELDS: &[&str] = &[$(stringify!($field)),*];
                let mut out = Self::default();
                while let Some(key) = map.next_key_seed(FieldIndex(FIELDS))? {
                    let mut index = 0usize;
                    let mut matched = false;
                    $(
                        if !matched && key == Some(index) {
                            out.$field = map.next_value::<L<$ty>>()?.0;
                            matched = true;
                        }
                        index += 1;
                    )*
                    let _ = index;
                    if !matched {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
    };
}

lenient_struct!(RawContainer {
    name: Str,
    aliases: List<Str>,
    spec: RawSpec,
    stats: List<RawStat>,
});
lenient_struct!(RawContainerLabelled {
    name: Str,
    aliases: List<Str>,
    spec: RawSpecLabelled,
    stats: List<RawStat>,
});
lenient_struct!(RawSpec { cpu: RawCpuSpec });
lenient_struct!(RawSpecLabelled {
    labels: StrMap,
    cpu: RawCpuSpec,
});
lenient_struct!(RawCpuSpec {
    quota: Num,
    period: Num,
    mask: Mask,
});
lenient_struct!(RawStat {
    timestamp: Ts,
    cpu: RawCpu,
});
lenient_struct!(RawCpu { usage: RawUsage });
lenient_struct!(RawUsage { total: Num });

/// A container entry as read, to what a reading needs.
trait IntoInfo {
    fn into_info(self, key: Option<String>) -> ContainerInfo;
}

impl IntoInfo for RawContainer {
    fn into_info(self, key: Option<String>) -> ContainerInfo {
        let name = self.name.0.or(key).unwrap_or_default();
        info(
            name,
            self.aliases,
            BTreeMap::new(),
            self.spec.cpu,
            self.stats,
        )
    }
}

impl IntoInfo for RawContainerLabelled {
    fn into_info(self, key: Option<String>) -> ContainerInfo {
        let name = self.name.0.or(key).unwrap_or_default();
        let labels = self.spec.labels.0;
        info(name, self.aliases, labels, self.spec.cpu, self.stats)
    }
}

fn info(
    name: String,
    aliases: List<Str>,
    labels: BTreeMap<String, String>,
    cpu: RawCpuSpec,
    stats: List<RawStat>,
) -> ContainerInfo {
    ContainerInfo {
        name,
        aliases: aliases.0.into_iter().filter_map(|a| a.0).collect(),
        labels,
        cpu: CpuSpec {
            quota: cpu.quota.0,
            period: cpu.period.0,
            cpuset_size: cpu.mask.0,
        },
        samples: stats
            .0
            .into_iter()
            .map(|s| Sample {
                timestamp: s.timestamp.0,
                usage_total: s.cpu.usage.total.0,
            })
            .collect(),
    }
}

/// Maps an object key to its index in a field list (`None` for unknown keys) without allocating.
struct FieldIndex(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldIndex {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|f| *f == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S_2016: Nanos = 1_466_179_564; // 2016-06-17T16:06:04Z

    #[test]
    fn parse_rfc3339_table() {
        let e9 = 1_000_000_000;
        let cases: &[(&str, Option<Nanos>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2016-06-17T16:06:04Z", Some(S_2016 * e9)),
            ("2016-06-17T16:06:04.7Z", Some(S_2016 * e9 + 700_000_000)),
            ("2016-06-17T16:06:04.78Z", Some(S_2016 * e9 + 780_000_000)),
            ("2016-06-17T16:06:04.787Z", Some(S_2016 * e9 + 787_000_000)),
            ("2016-06-17T16:06:04.7876Z", Some(S_2016 * e9 + 787_600_000)),
            (
                "2016-06-17T16:06:04.78767Z",
                Some(S_2016 * e9 + 787_670_000),
            ),
            (
                "2016-06-17T16:06:04.787676Z",
                Some(S_2016 * e9 + 787_676_000),
            ),
            (
                "2016-06-17T16:06:04.7876761Z",
                Some(S_2016 * e9 + 787_676_100),
            ),
            (
                "2016-06-17T16:06:04.78767617Z",
                Some(S_2016 * e9 + 787_676_170),
            ),
            (
                "2016-06-17T16:06:04.787676171Z",
                Some(S_2016 * e9 + 787_676_171),
            ),
            ("2016-06-17t16:06:04z", Some(S_2016 * e9)),
            // Go marshals local offsets: the same instant written in two zones.
            ("2016-06-17T18:06:04+02:00", Some(S_2016 * e9)),
            (
                "2016-06-17T10:36:04.5-05:30",
                Some(S_2016 * e9 + 500_000_000),
            ),
            ("2016-06-18T01:06:04+09:00", Some(S_2016 * e9)),
            ("1969-12-31T23:59:59.999999999Z", Some(-1)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800 * e9)),
            (
                "9999-12-31T23:59:59.999999999Z",
                Some(253_402_300_799 * e9 + 999_999_999),
            ),
            // Garbage.
            ("", None),
            ("2016-06-17", None),
            ("2016-06-17T16:06:04", None),
            ("2016-06-17T16:06:04.Z", None),
            ("2016-06-17T16:06:04.7876761712Z", None),
            ("2016-06-17T16:06:04.78x7Z", None),
            ("2016-06-17 16:06:04Z", None),
            ("2016-13-17T16:06:04Z", None),
            ("2016-00-17T16:06:04Z", None),
            ("2023-02-29T16:06:04Z", None),
            ("2016-06-31T16:06:04Z", None),
            ("2016-06-17T24:06:04Z", None),
            ("2016-06-17T16:60:04Z", None),
            ("2016-06-17T16:06:60Z", None),
            ("2016-06-17T16:06:04+2:00", None),
            ("2016-06-17T16:06:04+02:60", None),
            ("2016-06-17T16:06:04+0200", None),
            ("2016-06-17T16:06:04ZZ", None),
            ("2016-06-17T16:06:04Z ", None),
            ("+016-06-17T16:06:04Z", None),
            ("2016-06-17T16:06:04.０Z", None),
            ("二〇一六-06-17T16:06:04Z", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339(s), *want, "{s:?}");
        }
    }

    #[test]
    fn format_rfc3339_round_trips() {
        for t in [
            0,
            -1,
            1,
            1_466_179_564_787_676_170,
            253_402_300_799_999_999_999,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{t}");
        }
        assert_eq!(
            format_rfc3339(1_466_179_564_787_676_170),
            "2016-06-17T16:06:04.78767617Z"
        );
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn cpuset_size_table() {
        let cases: &[(&str, Option<u32>)] = &[
            ("0", Some(1)),
            ("0-1", Some(2)),
            ("0-1,4", Some(3)),
            ("0-3,8-11", Some(8)),
            ("0-3,2-5", Some(6)),
            ("3,1,2", Some(3)),
            ("0-1,1", Some(2)),
            (" 0-1 ", Some(2)),
            ("", None),
            ("a-b", None),
            ("3-1", None),
            ("0-1,", None),
            ("-1", None),
            ("0-4294967295", None),
        ];
        for (s, want) in cases {
            assert_eq!(cpuset_size(s), *want, "{s:?}");
        }
    }

    const OBJECT_FORM: &str = r#"{
      "/docker/aaa": {
        "id": "aaa", "name": "/docker/aaa", "aliases": ["web1", "aaa"], "namespace": "docker",
        "labels": {"x": "y"},
        "spec": {"has_cpu": true, "cpu": {"limit": 1024, "max_limit": 0, "mask": "0-3",
                 "quota": 200000, "period": 100000}, "image": "nginx",
                 "labels": {"com.docker.compose.container-number": "2", "n": 5, "e": "",
                            "dup": "first", "dup": "last", "nested": {"a": "b"}}},
        "stats": [
          {"timestamp": "2016-06-17T16:06:04Z", "cpu": {"usage": {"total": 1000, "per_cpu_usage": [1, 2]}}},
          {"timestamp": "2016-06-17T16:06:05.5Z", "cpu": {"usage": {"total": 2000}}, "memory": {}}
        ]
      },
      "/docker/bbb": {"name": "/docker/bbb", "aliases": ["sidecar", "bbb"], "spec": {"cpu": {"mask": "0"}},
                      "stats": []},
      "/docker/nameless": {"stats": [{"timestamp": 5}]}
    }"#;

    #[test]
    fn parses_object_form() {
        let lean = parse_containers(OBJECT_FORM.as_bytes()).unwrap();
        assert!(lean.iter().all(|c| c.labels.is_empty()), "labels unread");
        let got = parse_containers_with_labels(OBJECT_FORM.as_bytes()).unwrap();
        let without: Vec<ContainerInfo> = got
            .iter()
            .cloned()
            .map(|c| ContainerInfo {
                labels: BTreeMap::new(),
                ..c
            })
            .collect();
        assert_eq!(lean, without, "the same but for the labels");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name, "/docker/aaa");
        assert_eq!(got[0].aliases, ["web1", "aaa"]);
        // spec.labels, the ones with string values; the top-level `labels` is not read.
        let labels: Vec<(&str, &str)> = got[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("com.docker.compose.container-number", "2"),
                ("dup", "last"),
                ("e", "")
            ]
        );
        assert!(got[1].labels.is_empty());
        assert_eq!(
            got[0].cpu,
            CpuSpec {
                quota: Some(200_000),
                period: Some(100_000),
                cpuset_size: Some(4)
            }
        );
        assert_eq!(
            got[0].samples,
            [
                Sample {
                    timestamp: Some(S_2016 * 1_000_000_000),
                    usage_total: Some(1000)
                },
                Sample {
                    timestamp: Some(S_2016 * 1_000_000_000 + 1_500_000_000),
                    usage_total: Some(2000)
                },
            ]
        );
        assert_eq!(got[1].aliases, ["sidecar", "bbb"]);
        assert_eq!(got[1].cpu.cpuset_size, Some(1));
        assert!(got[1].samples.is_empty());
        // No `name`: the object key stands in.
        assert_eq!(got[2].name, "/docker/nameless");
        assert_eq!(got[2].samples, [Sample::default()]);
    }

    #[test]
    fn parses_array_form() {
        let body = r#"[{"name": "/a", "stats": [{"timestamp": "2016-06-17T16:06:04Z",
                        "cpu": {"usage": {"total": 7}}}]}, {"name": "/b"}]"#;
        let got = parse_containers(body.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "/a");
        assert_eq!(got[0].samples[0].usage_total, Some(7));
        assert!(got[0].aliases.is_empty());
        assert_eq!(got[1].name, "/b");
        assert!(got[1].samples.is_empty());
    }

    #[test]
    fn wrong_types_degrade_per_field() {
        let body = r#"{
          "/a": {"name": 5, "aliases": "web", "spec": [], "stats": {"x": 1}},
          "/b": {"aliases": [1, "b", null], "spec": {"cpu": {"quota": -1, "period": "x", "mask": 3}},
                 "stats": [1, "s", null, {"timestamp": "bad", "cpu": {"usage": {"total": -5}}},
                           {"timestamp": "2016-06-17T16:06:04Z", "cpu": {"usage": {"total": 1e300}}},
                           {"timestamp": "2016-06-17T16:06:04Z", "cpu": {"usage": {"total": 184467440737095516160}}},
                           {"timestamp": "2016-06-17T16:06:04Z", "cpu": {"usage": {"total": 18446744073709551615}}},
                           {"timestamp": "2016-06-17T16:06:04Z", "cpu": null}]},
          "/c": "not an object",
          "/d": null
        }"#;
        let got = parse_containers(body.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "/a");
        assert!(got[0].aliases.is_empty() && got[0].samples.is_empty());
        assert_eq!(got[1].aliases, ["b"]);
        assert_eq!(got[1].cpu, CpuSpec::default());
        let usages: Vec<_> = got[1].samples.iter().map(|s| s.usage_total).collect();
        assert_eq!(
            usages,
            [None, None, None, None, None, None, Some(u64::MAX), None]
        );
        assert_eq!(got[1].samples[3].timestamp, None);
        assert!(got[1].samples[4].timestamp.is_some());
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"   ",
            b"null",
            b"42",
            b"\"x\"",
            b"{",
            b"[{]",
            b"{\"a\": {\"stats\": [}}",
            b"{} trailing",
            b"<html>502 Bad Gateway</html>",
            b"\xff\xfe\x00",
        ] {
            assert!(
                parse_containers(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(parse_containers(b"{}").unwrap(), vec![]);
        assert_eq!(parse_containers(b"[]").unwrap(), vec![]);
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let body = br#"[{"name": "/x", "name": "/y", "stats": [], "stats": [{"timestamp": "1970-01-01T00:00:01Z"}]}]"#;
        let got = parse_containers(body).unwrap();
        assert_eq!(got[0].name, "/y");
        assert_eq!(got[0].samples.len(), 1);
    }

    #[test]
    fn parse_num_cores_table() {
        assert_eq!(parse_num_cores(br#"{"num_cores": 2, "x": [1]}"#), Ok(2));
        assert_eq!(parse_num_cores(br#"{"num_cores": 8192}"#), Ok(8192));
        for body in [
            &br#"{"num_cores": -1}"#[..],
            br#"{"num_cores": "2"}"#,
            br#"{"num_cores": 99999999999}"#,
            // Fits u32, but no machine has it: every container would look idle.
            br#"{"num_cores": 4000000000}"#,
            br#"{"num_cores": 8193}"#,
            br#"{}"#,
            b"[]",
            // Found by fuzzing (fuzz/run cadvisor_machine): an array read as the struct.
            b"[0]",
            b" \n[4]",
            b"",
            b"garbage",
        ] {
            assert!(parse_num_cores(body).is_err());
        }
    }

    /// Real captures from /work/shared; skipped (with a note) where that checkout is absent.
    fn shared_fixture(name: &str) -> Option<Vec<u8>> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/cadvisor");
        if !dir.exists() {
            eprintln!("skipped: {} not found", dir.display());
            return None;
        }
        Some(std::fs::read(dir.join(name)).expect("fixture listed in the README"))
    }

    #[test]
    fn real_v12_subcontainers_array() {
        let Some(body) = shared_fixture("v1.2_subcontainers_datadog.json") else {
            return;
        };
        let got = parse_containers(&body).unwrap();
        let names: Vec<_> = got.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), 5);
        assert_eq!(names[0], "/system");
        assert_eq!(names[2], "/");
        assert_eq!(names[4], "/kubelet");
        let docker: Vec<_> = got.iter().filter(|c| !c.aliases.is_empty()).collect();
        assert_eq!(docker.len(), 2);
        for c in &docker {
            assert_eq!(c.aliases.len(), 2);
            assert_eq!(c.aliases[1], c.name.trim_start_matches('/'));
            assert_eq!(c.cpu.quota, None);
            assert_eq!(c.cpu.cpuset_size, Some(2));
            assert_eq!(c.samples.len(), 8);
            assert!(c
                .samples
                .iter()
                .all(|s| s.timestamp.is_some() && s.usage_total.is_some()));
        }
        assert!(docker[0].aliases[0].starts_with("k8s_dd-agent."));
        assert_eq!(got[2].samples.len(), 9);
    }

    #[test]
    fn real_v12_machine() {
        let Some(body) = shared_fixture("v1.2_machine_ddagent.json") else {
            return;
        };
        assert_eq!(parse_num_cores(&body), Ok(2));
        if let Some(body) = shared_fixture("v2.1_machine_cadvisoranalysis.json") {
            assert_eq!(parse_num_cores(&body), Ok(2));
        }
    }

    #[test]
    fn real_payloads_of_other_shapes_do_not_panic() {
        for name in [
            "v2.0_stats_docker_count1_hiway.json",
            "v2.1_machinestats_cadvisoranalysis_first20.json",
            "metrics_prometheus_cadvisor_testdata.txt",
        ] {
            let Some(body) = shared_fixture(name) else {
                return;
            };
            let _ = parse_containers(&body);
            let _ = parse_num_cores(&body);
        }
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        /// JSON-ish text built from the tokens a cAdvisor reply uses, so the fuzzer reaches deep
        /// into the structure instead of failing at the first byte.
        fn jsonish() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                Just("{".to_owned()),
                Just("}".to_owned()),
                Just("[".to_owned()),
                Just("]".to_owned()),
                Just(",".to_owned()),
                Just(":".to_owned()),
                Just("\"stats\"".to_owned()),
                Just("\"cpu\"".to_owned()),
                Just("\"usage\"".to_owned()),
                Just("\"total\"".to_owned()),
                Just("\"timestamp\"".to_owned()),
                Just("\"spec\"".to_owned()),
                Just("\"quota\"".to_owned()),
                Just("\"mask\"".to_owned()),
                Just("\"aliases\"".to_owned()),
                Just("\"name\"".to_owned()),
                Just("\"2016-06-17T16:06:04.5Z\"".to_owned()),
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("-1".to_owned()),
                Just("1e400".to_owned()),
                Just("184467440737095516160".to_owned()),
                any::<u64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| n.to_string()),
                "\"[ -~]{0,12}\"".prop_map(|s| s),
            ];
            proptest::collection::vec(token, 0..64).prop_map(|v| v.concat())
        }

        /// Valid JSON shaped like a reply, with every leaf a random type: exercises the lenient
        /// readers (the token soup above is mostly rejected as a syntax error).
        fn reply_like() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::{json, Value};
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(f)),
                Just(json!("2016-06-17T16:06:04.5Z")),
                Just(json!("0-3")),
                ".{0,8}".prop_map(Value::from),
            ];
            let value = leaf.prop_recursive(4, 48, 6, |inner| {
                let key = prop_oneof![
                    Just("name"),
                    Just("aliases"),
                    Just("spec"),
                    Just("cpu"),
                    Just("quota"),
                    Just("period"),
                    Just("mask"),
                    Just("stats"),
                    Just("timestamp"),
                    Just("usage"),
                    Just("total"),
                    Just("x"),
                ];
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::vec((key, inner), 0..6).prop_map(|kv| {
                        Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    }),
                ]
            });
            prop_oneof![
                proptest::collection::vec(value.clone(), 0..4).prop_map(Value::from),
                proptest::collection::vec(("/docker/[a-f0-9]{2}", value), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        }

        proptest! {
            #[test]
            fn reply_like_json_always_parses(v in reply_like()) {
                let body = serde_json::to_vec(&v).unwrap();
                let cs = parse_containers(&body).unwrap();
                // Every object entry becomes a container; nothing else does.
                let objects = match &v {
                    serde_json::Value::Array(a) => a.iter().filter(|e| e.is_object()).count(),
                    serde_json::Value::Object(m) => m.values().filter(|e| e.is_object()).count(),
                    _ => unreachable!(),
                };
                prop_assert_eq!(cs.len(), objects);
                for c in &cs {
                    for n in [0, 1, 4] {
                        for w in [
                            crate::source::cadvisor::Window::Span(std::time::Duration::from_secs(60)),
                            crate::source::cadvisor::Window::Since(0),
                        ] {
                            if let Ok(u) = crate::source::cadvisor::utilisation(c, n, w) {
                                prop_assert!(u.cpu.is_finite() && u.cpu >= 0.0);
                                prop_assert!(u.from < u.to);
                            }
                        }
                    }
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_containers(&body);
                let _ = parse_num_cores(&body);
            }

            #[test]
            fn jsonish_never_panics(body in jsonish()) {
                if let Ok(cs) = parse_containers(body.as_bytes()) {
                    for c in &cs {
                        let _ = crate::source::cadvisor::utilisation(c, 2, crate::source::cadvisor::Window::Span(std::time::Duration::from_secs(60)));
                    }
                }
                let _ = parse_num_cores(body.as_bytes());
            }
        }
    }
}
