//! Resources: the wire `Resource` message and arithmetic over collections of them.
//!
//! Scalars have Mesos's fixed-point semantics (three decimals). Two resources combine when
//! their name, type, reservation role, allocation role and disk info agree.
use crate::ids::Text;
use crate::json::{lenient_f64, write_f64};
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValueType {
    Scalar,
    Ranges,
    Set,
    Text,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scalar {
    #[serde(deserialize_with = "lenient_f64", serialize_with = "write_f64")]
    pub value: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Range {
    #[serde(deserialize_with = "crate::json::lenient_u64")]
    pub begin: u64,
    #[serde(deserialize_with = "crate::json::lenient_u64")]
    pub end: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ranges {
    #[serde(default, deserialize_with = "crate::json::exact_vec")]
    pub range: Vec<Range>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Set {
    #[serde(default)]
    pub item: Vec<String>,
}

/// `Value.Text`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextValue {
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllocationInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Text>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationType {
    Static,
    Dynamic,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReservationInfo {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ReservationType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<serde_json::Value>,
}

/// The wire `Resource`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub name: Text,
    #[serde(rename = "type")]
    pub kind: ValueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Ranges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Set>,
    /// Legacy (pre-refinement) role: `"*"` for unreserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<AllocationInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<ReservationInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocable: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<Box<serde_json::Value>>,
}

/// Rounds to Mesos's fixed-point precision (0.001).
pub fn round3(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        v
    }
}

impl Resource {
    pub fn scalar(name: &str, value: f64) -> Self {
        Self::bare(name, ValueType::Scalar, Some(Scalar { value: round3(value) }), None, None)
    }

    pub fn ranges(name: &str, ranges: Vec<(u64, u64)>) -> Self {
        let range = normalize_ranges(ranges).into_iter().map(|(b, e)| Range { begin: b, end: e }).collect();
        Self::bare(name, ValueType::Ranges, None, Some(Ranges { range }), None)
    }

    pub fn set(name: &str, items: Vec<String>) -> Self {
        let mut item = items;
        item.sort();
        item.dedup();
        Self::bare(name, ValueType::Set, None, None, Some(Set { item }))
    }

    fn bare(name: &str, kind: ValueType, scalar: Option<Scalar>, ranges: Option<Ranges>, set: Option<Set>) -> Self {
        Resource {
            name: name.into(),
            kind,
            scalar,
            ranges,
            set,
            role: None,
            allocation_info: None,
            reservation: None,
            reservations: Vec::new(),
            disk: None,
            revocable: None,
            shared: None,
            provider_id: None,
        }
    }

    /// The role this resource is reserved for, `"*"` when unreserved.
    pub fn reservation_role(&self) -> &str {
        if let Some(r) = self.reservations.last().and_then(|r| r.role.as_deref()) {
            return r;
        }
        self.role.as_deref().unwrap_or("*")
    }

    pub fn is_reserved(&self) -> bool {
        self.reservation_role() != "*"
    }

    /// The last (innermost) reservation, when it was made dynamically (RESERVE).
    pub fn dynamic_reservation(&self) -> Option<&ReservationInfo> {
        self.reservations.last().filter(|r| r.kind == Some(ReservationType::Dynamic))
    }

    /// `disk.persistence.id` of a persistent volume.
    pub fn persistence_id(&self) -> Option<&str> {
        self.disk.as_ref()?.get("persistence")?.get("id")?.as_str().filter(|s| !s.is_empty())
    }

    /// `disk.volume` of a persistent volume: (container path, read-only).
    pub fn volume_mount(&self) -> Option<(&str, bool)> {
        let v = self.disk.as_ref()?.get("volume")?;
        let path = v.get("container_path")?.as_str()?;
        Some((path, v.get("mode").and_then(|m| m.as_str()) == Some("RO")))
    }

    /// Whether an agent keeps it in its checkpoint: made by an offer operation (a dynamic
    /// reservation or a persistent volume), so not in its `--resources`.
    pub fn is_checkpointed(&self) -> bool {
        self.dynamic_reservation().is_some() || self.persistence_id().is_some()
    }

    /// What an offer operation made it from: the same amount without volume info and
    /// without dynamic reservations.
    pub fn base_form(&self) -> Resource {
        let mut r = self.without_volume();
        let mut popped = false;
        while r.dynamic_reservation().is_some() {
            r.reservations.pop();
            popped = true;
        }
        if popped {
            // The legacy role field mirrored the reservation just taken off.
            r.role = r.reservations.last().and_then(|x| x.role.as_deref().map(Text::from)).filter(|_| r.role.is_some());
        }
        r
    }

    /// The same resource without `disk.persistence` and `disk.volume`.
    pub fn without_volume(&self) -> Resource {
        let mut r = self.clone();
        if let Some(d) = r.disk.as_mut() {
            if let Some(obj) = d.as_object_mut() {
                obj.remove("persistence");
                obj.remove("volume");
                if obj.is_empty() {
                    r.disk = None;
                }
            }
        }
        r
    }

    pub fn allocation_role(&self) -> Option<&str> {
        self.allocation_info.as_ref().and_then(|a| a.role.as_deref())
    }

    /// Sets or clears the allocation role.
    pub fn with_allocation(mut self, role: Option<&str>) -> Self {
        self.allocation_info = role.map(|r| AllocationInfo { role: Some(r.into()) });
        self
    }

    fn scalar_value(&self) -> f64 {
        self.scalar.as_ref().map(|s| s.value).unwrap_or(0.0)
    }

    fn range_pairs(&self) -> Vec<(u64, u64)> {
        self.ranges.as_ref().map(|r| r.range.iter().map(|r| (r.begin, r.end)).collect()).unwrap_or_default()
    }

    fn set_items(&self) -> Vec<String> {
        self.set.as_ref().map(|s| s.item.clone()).unwrap_or_default()
    }

    /// Whether `other` can be merged into or subtracted from this one.
    fn same_kind(&self, other: &Resource) -> bool {
        self.name == other.name
            && self.kind == other.kind
            && self.reservation_role() == other.reservation_role()
            && self.dynamic_reservation() == other.dynamic_reservation()
            && self.allocation_role() == other.allocation_role()
            && self.disk == other.disk
            && self.revocable.is_some() == other.revocable.is_some()
            && self.shared.is_some() == other.shared.is_some()
            && self.provider_id == other.provider_id
    }

    fn is_empty(&self) -> bool {
        match self.kind {
            ValueType::Scalar => self.scalar_value() <= 0.0005,
            ValueType::Ranges => self.ranges.as_ref().is_none_or(|r| r.range.is_empty()),
            ValueType::Set => self.set.as_ref().is_none_or(|s| s.item.is_empty()),
            ValueType::Text => true,
        }
    }

    /// Whether [`Resources::add`] would keep this value as it is: a scalar already rounded,
    /// ranges sorted with neither overlaps nor adjacent neighbours.
    fn is_normalized(&self) -> bool {
        match self.kind {
            ValueType::Scalar => round3(self.scalar_value()) == self.scalar_value(),
            ValueType::Ranges => self.ranges.as_ref().is_none_or(|r| {
                r.range.iter().all(|x| x.begin <= x.end)
                    && r.range.windows(2).all(|w| w[0].end.saturating_add(1) < w[1].begin)
            }),
            ValueType::Set | ValueType::Text => true,
        }
    }

    /// Checks the value fields agree with the type and hold sane values.
    pub fn validate(&self) -> Result<(), ResourceError> {
        if self.name.is_empty() {
            return Err(ResourceError::Invalid("resource with an empty name".into()));
        }
        match self.kind {
            ValueType::Scalar => {
                let v = self.scalar.as_ref().map(|s| s.value).ok_or_else(|| {
                    ResourceError::Invalid(format!("scalar resource '{}' has no 'scalar' value", self.name))
                })?;
                if !v.is_finite() || v < 0.0 {
                    return Err(ResourceError::Invalid(format!("resource '{}' has invalid value {v}", self.name)));
                }
            }
            ValueType::Ranges => {
                let r = self.ranges.as_ref().ok_or_else(|| {
                    ResourceError::Invalid(format!("ranges resource '{}' has no 'ranges' value", self.name))
                })?;
                if let Some(bad) = r.range.iter().find(|r| r.begin > r.end) {
                    return Err(ResourceError::Invalid(format!(
                        "resource '{}' has an invalid range [{}-{}]",
                        self.name, bad.begin, bad.end
                    )));
                }
            }
            ValueType::Set => {
                if self.set.is_none() {
                    return Err(ResourceError::Invalid(format!("set resource '{}' has no 'set' value", self.name)));
                }
            }
            ValueType::Text => {
                return Err(ResourceError::Invalid(format!("resource '{}' cannot be of type TEXT", self.name)));
            }
        }
        Ok(())
    }
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn normalize_ranges(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|(b, e)| b <= e);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (b, e) in v {
        match out.last_mut() {
            Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((b, e)),
        }
    }
    out
}

fn subtract_ranges(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut s, e) in a {
        let mut keep = true;
        for &(bs, be) in b {
            if be < s || bs > e {
                continue;
            }
            if bs > s {
                out.push((s, bs - 1));
            }
            if be >= e {
                keep = false;
                break;
            }
            s = be + 1;
        }
        if keep && s <= e {
            out.push((s, e));
        }
    }
    normalize_ranges(out)
}

fn ranges_contain(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    b.iter().all(|&(bs, be)| a.iter().any(|&(s, e)| s <= bs && be <= e))
}

#[derive(Debug, Error, PartialEq)]
pub enum ResourceError {
    #[error("invalid resource: {0}")]
    Invalid(String),
    #[error("cannot parse resources '{input}': {why}")]
    Parse { input: String, why: String },
}

/// A collection of resources, kept merged: at most one entry per identity.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Resources(pub Vec<Resource>);

impl Resources {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Merges a list into a collection with no spare room; a list that needs no merging
    /// keeps its allocation (no copy, no growth: a task's resources arrive merged).
    pub fn from_vec(v: Vec<Resource>) -> Self {
        let merged = v.len() <= 64
            && v.iter()
                .enumerate()
                .all(|(i, x)| !x.is_empty() && x.is_normalized() && !v[..i].iter().any(|y| y.same_kind(x)));
        if merged {
            return Self(v);
        }
        let mut r = Self(Vec::with_capacity(v.len()));
        for x in v {
            r.add(&x);
        }
        r.0.shrink_to_fit();
        r
    }

    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Resource> {
        self.0
    }

    /// Adds one resource, merging with a matching entry.
    pub fn add(&mut self, r: &Resource) {
        if r.is_empty() {
            return;
        }
        if let Some(x) = self.0.iter_mut().find(|x| x.same_kind(r)) {
            match r.kind {
                ValueType::Scalar => {
                    x.scalar = Some(Scalar { value: round3(x.scalar_value() + r.scalar_value()) });
                }
                ValueType::Ranges => {
                    let mut v = x.range_pairs();
                    v.extend(r.range_pairs());
                    x.ranges = Some(Ranges {
                        range: normalize_ranges(v).into_iter().map(|(b, e)| Range { begin: b, end: e }).collect(),
                    });
                }
                ValueType::Set => {
                    let mut v = x.set_items();
                    v.extend(r.set_items());
                    v.sort();
                    v.dedup();
                    x.set = Some(Set { item: v });
                }
                ValueType::Text => {}
            }
        } else {
            let mut r = r.clone();
            if r.kind == ValueType::Ranges {
                r.ranges = Some(Ranges {
                    range: normalize_ranges(r.range_pairs())
                        .into_iter()
                        .map(|(b, e)| Range { begin: b, end: e })
                        .collect(),
                });
            }
            if r.kind == ValueType::Scalar {
                r.scalar = Some(Scalar { value: round3(r.scalar_value()) });
            }
            self.0.push(r);
        }
    }

    pub fn add_all(&mut self, other: &Resources) {
        for r in &other.0 {
            self.add(r);
        }
    }

    /// Subtracts one resource (saturating at empty).
    pub fn subtract(&mut self, r: &Resource) {
        if let Some(i) = self.0.iter().position(|x| x.same_kind(r)) {
            let x = &mut self.0[i];
            match r.kind {
                ValueType::Scalar => {
                    x.scalar = Some(Scalar { value: round3((x.scalar_value() - r.scalar_value()).max(0.0)) });
                }
                ValueType::Ranges => {
                    let v = subtract_ranges(&x.range_pairs(), &normalize_ranges(r.range_pairs()));
                    x.ranges = Some(Ranges { range: v.into_iter().map(|(b, e)| Range { begin: b, end: e }).collect() });
                }
                ValueType::Set => {
                    let rem = r.set_items();
                    let v = x.set_items().into_iter().filter(|i| !rem.contains(i)).collect();
                    x.set = Some(Set { item: v });
                }
                ValueType::Text => {}
            }
            if x.is_empty() {
                self.0.remove(i);
            }
        }
    }

    pub fn subtract_all(&mut self, other: &Resources) {
        for r in &other.0 {
            self.subtract(r);
        }
    }

    /// Whether one resource is wholly contained.
    pub fn contains_one(&self, r: &Resource) -> bool {
        if r.is_empty() {
            return true;
        }
        let Some(x) = self.0.iter().find(|x| x.same_kind(r)) else {
            return false;
        };
        match r.kind {
            ValueType::Scalar => x.scalar_value() + 0.0005 >= r.scalar_value(),
            ValueType::Ranges => ranges_contain(&x.range_pairs(), &normalize_ranges(r.range_pairs())),
            ValueType::Set => {
                let have = x.set_items();
                r.set_items().iter().all(|i| have.contains(i))
            }
            ValueType::Text => false,
        }
    }

    /// Whether every resource of `other` is contained (as a whole, after merging).
    pub fn contains(&self, other: &Resources) -> bool {
        let merged = Resources::from_vec(other.0.clone());
        merged.0.iter().all(|r| self.contains_one(r))
    }

    /// Sum of the scalar resource `name` across roles.
    pub fn scalar(&self, name: &str) -> f64 {
        let sum: f64 =
            self.0.iter().filter(|r| r.name == name && r.kind == ValueType::Scalar).map(|r| r.scalar_value()).sum();
        // An empty float sum is -0.0; never show "-0" to anyone.
        round3(sum) + 0.0
    }

    /// All ranges of `name` across roles, merged.
    pub fn ranges_of(&self, name: &str) -> Vec<(u64, u64)> {
        normalize_ranges(self.0.iter().filter(|r| r.name == name).flat_map(|r| r.range_pairs()).collect())
    }

    /// The same resources with their allocation role set (or cleared).
    pub fn allocated_to(&self, role: Option<&str>) -> Resources {
        Resources::from_vec(self.0.iter().map(|r| r.clone().with_allocation(role)).collect())
    }

    /// Only the resources usable by `role`: unreserved ones and those reserved to it.
    pub fn usable_by(&self, role: &str) -> Resources {
        Resources(self.0.iter().filter(|r| !r.is_reserved() || r.reservation_role() == role).cloned().collect())
    }

    /// Fills in the legacy `role` field (`"*"` when unreserved) as Mesos shows it.
    pub fn with_legacy_roles(&self) -> Resources {
        Resources(
            self.0
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if r.role.is_none() {
                        r.role = Some(r.reservation_role().into());
                    }
                    r
                })
                .collect(),
        )
    }

    /// The flat map of v0 endpoints: `{"cpus":1,"gpus":0,"mem":32,"disk":0,"ports":"[31000-32000]"}`.
    pub fn to_legacy_map(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for name in ["cpus", "gpus", "mem", "disk"] {
            m.insert(name.into(), serde_json::json!(self.scalar(name)));
        }
        for r in &self.0 {
            match r.kind {
                ValueType::Scalar if !m.contains_key(r.name.as_str()) => {
                    m.insert(r.name.to_string(), serde_json::json!(self.scalar(&r.name)));
                }
                ValueType::Ranges if !m.contains_key(r.name.as_str()) => {
                    m.insert(r.name.to_string(), serde_json::Value::String(format_ranges(&self.ranges_of(&r.name))));
                }
                ValueType::Set if !m.contains_key(r.name.as_str()) => {
                    m.insert(r.name.to_string(), serde_json::Value::String(format!("{{{}}}", r.set_items().join(","))));
                }
                _ => {}
            }
        }
        serde_json::Value::Object(m)
    }

    /// Parses the agent's `--resources` text form: `cpus:4;mem:2048;ports:[31000-32000];cpus(web):2`,
    /// or a JSON array of Resource objects.
    pub fn parse(text: &str) -> Result<Resources, ResourceError> {
        let perr = |why: String| ResourceError::Parse { input: text.to_string(), why };
        let t = text.trim();
        if t.starts_with('[') && t.contains('{') {
            let v: Vec<Resource> = serde_json::from_str(t).map_err(|e| perr(e.to_string()))?;
            for r in &v {
                r.validate()?;
            }
            return Ok(Resources::from_vec(v));
        }
        let mut out = Resources::new();
        for part in t.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once(':').ok_or_else(|| perr(format!("'{part}' is not NAME:VALUE")))?;
            let key = key.trim();
            let (name, role) = match key.split_once('(') {
                Some((n, rest)) => {
                    let role = rest.strip_suffix(')').ok_or_else(|| perr(format!("'{key}' has an unclosed role")))?;
                    (n.trim(), role.trim())
                }
                None => (key, "*"),
            };
            if name.is_empty() || role.is_empty() {
                return Err(perr(format!("'{part}' has an empty name or role")));
            }
            let value = value.trim();
            let mut r = if let Some(inner) = value.strip_prefix('[') {
                let inner = inner.strip_suffix(']').ok_or_else(|| perr(format!("'{value}' has no closing ']'")))?;
                let mut v = Vec::new();
                for piece in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (b, e) = piece.split_once('-').unwrap_or((piece, piece));
                    let b: u64 = b.trim().parse().map_err(|_| perr(format!("bad range '{piece}'")))?;
                    let e: u64 = e.trim().parse().map_err(|_| perr(format!("bad range '{piece}'")))?;
                    if b > e {
                        return Err(perr(format!("range '{piece}' ends before it begins")));
                    }
                    v.push((b, e));
                }
                Resource::ranges(name, v)
            } else if let Some(inner) = value.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| perr(format!("'{value}' has no closing '}}'")))?;
                Resource::set(name, inner.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            } else {
                let v: f64 = value.parse().map_err(|_| perr(format!("'{value}' is not a number")))?;
                if !v.is_finite() || v < 0.0 {
                    return Err(perr(format!("'{value}' is not a non-negative number")));
                }
                Resource::scalar(name, v)
            };
            if role != "*" {
                r.reservations.push(ReservationInfo {
                    kind: Some(ReservationType::Static),
                    role: Some(role.to_string()),
                    principal: None,
                    labels: None,
                });
            }
            out.add(&r);
        }
        Ok(out)
    }
}

/// `[31000-32000, 33000-33001]`
pub fn format_ranges(v: &[(u64, u64)]) -> String {
    let parts: Vec<String> = v.iter().map(|(b, e)| format!("{b}-{e}")).collect();
    format!("[{}]", parts.join(", "))
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for r in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// `disk(db):200`, with `[volume-id]` for a persistent volume.
impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if self.is_reserved() {
            write!(f, "({})", self.reservation_role())?;
        }
        if let Some(id) = self.persistence_id() {
            write!(f, "[{id}]")?;
        }
        match self.kind {
            ValueType::Scalar => write!(f, ":{}", self.scalar_value()),
            ValueType::Ranges => write!(f, ":{}", format_ranges(&self.range_pairs())),
            ValueType::Set => write!(f, ":{{{}}}", self.set_items().join(",")),
            ValueType::Text => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_text_form() {
        let r = Resources::parse("cpus:4;mem:2048;disk:10000;ports:[31000-32000];cpus(web):2").unwrap();
        assert_eq!(r.scalar("cpus"), 6.0);
        assert_eq!(r.usable_by("*").scalar("cpus"), 4.0);
        assert_eq!(r.usable_by("web").scalar("cpus"), 6.0);
        assert_eq!(r.ranges_of("ports"), vec![(31000, 32000)]);
        assert_eq!(r.to_legacy_map()["ports"], "[31000-32000]");
        assert_eq!(r.to_legacy_map()["gpus"], 0.0);
    }

    #[test]
    fn parse_errors_are_clear() {
        for bad in ["cpus", "cpus:x", "ports:[5-1]", "cpus(:1", "mem:-1", "ports:[1-2"] {
            let e = Resources::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn empty_scalars_are_positive_zero() {
        let r = Resources::new();
        assert!(r.scalar("cpus").is_sign_positive());
        assert_eq!(serde_json::to_string(&r.to_legacy_map()["cpus"]).unwrap(), "0.0");
    }

    #[test]
    fn fixed_point() {
        let mut r = Resources::new();
        for _ in 0..10 {
            r.add(&Resource::scalar("cpus", 0.1));
        }
        assert_eq!(r.scalar("cpus"), 1.0);
        r.subtract(&Resource::scalar("cpus", 1.0));
        assert!(r.is_empty());
    }

    #[test]
    fn ranges_arithmetic() {
        let mut r = Resources::from_vec(vec![Resource::ranges("ports", vec![(31000, 32000)])]);
        r.subtract(&Resource::ranges("ports", vec![(31005, 31010)]));
        assert_eq!(r.ranges_of("ports"), vec![(31000, 31004), (31011, 32000)]);
        assert!(!r.contains_one(&Resource::ranges("ports", vec![(31004, 31005)])));
        assert!(r.contains_one(&Resource::ranges("ports", vec![(31011, 31020)])));
    }

    #[test]
    fn allocation_roles_do_not_mix() {
        let a = Resources::from_vec(vec![Resource::scalar("cpus", 1.0)]).allocated_to(Some("a"));
        assert!(!a.contains_one(&Resource::scalar("cpus", 1.0)));
        assert!(a.contains(&Resources::from_vec(vec![Resource::scalar("cpus", 1.0)]).allocated_to(Some("a"))));
    }

    #[test]
    fn json_shape() {
        let r = Resource::scalar("cpus", 0.5);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j, serde_json::json!({"name":"cpus","type":"SCALAR","scalar":{"value":0.5}}));
        let back: Resource =
            serde_json::from_str(r#"{"name":"mem","type":"SCALAR","scalar":{"value":"64"},"junk":1}"#).unwrap();
        assert_eq!(back.scalar_value(), 64.0);
    }

    fn arb_resources() -> impl Strategy<Value = Resources> {
        (0u32..10_000, 0u32..100_000, proptest::collection::vec((31000u64..32000, 0u64..20), 0..5)).prop_map(
            |(c, m, ports)| {
                Resources::from_vec(vec![
                    Resource::scalar("cpus", c as f64 / 1000.0),
                    Resource::scalar("mem", m as f64),
                    Resource::ranges("ports", ports.into_iter().map(|(b, l)| (b, b + l)).collect()),
                ])
            },
        )
    }

    /// Raw lists as a client or an agent might send them: repeated kinds, values needing
    /// rounding, empty values, unsorted and overlapping ranges, sets, roles.
    fn arb_list() -> impl Strategy<Value = Vec<Resource>> {
        let one =
            (0usize..4, 0u32..3, 0u64..40_000, proptest::collection::vec((0u64..50, 0u64..6), 0..4), any::<bool>())
                .prop_map(|(kind, role, v, pairs, alloc)| {
                    let mut r = match kind {
                        0 => Resource::scalar("cpus", 0.0),
                        1 => Resource::scalar("mem", 0.0),
                        2 => Resource::ranges("ports", vec![(1, 1)]),
                        _ => Resource::set("disks", vec![]),
                    };
                    match kind {
                        0 | 1 => r.scalar = Some(Scalar { value: v as f64 / 10_000.0 }),
                        2 => {
                            r.ranges = Some(Ranges {
                                range: pairs.iter().map(|&(b, l)| Range { begin: b, end: b + l }).collect(),
                            })
                        }
                        _ => r.set = Some(Set { item: pairs.iter().map(|(b, _)| format!("d{}", b % 4)).collect() }),
                    }
                    if role > 0 {
                        r.role = Some(if role == 1 { "a" } else { "b" }.into());
                    }
                    r.with_allocation(alloc.then_some("r"))
                });
        proptest::collection::vec(one, 0..6)
    }

    proptest! {
        #[test]
        fn from_vec_equals_adding_one_by_one(list in arb_list()) {
            let mut naive = Resources::new();
            for r in &list {
                naive.add(r);
            }
            prop_assert_eq!(Resources::from_vec(list), naive);
        }

        #[test]
        fn add_then_subtract_is_identity(a in arb_resources(), b in arb_resources()) {
            let mut s = a.clone();
            s.add_all(&b);
            prop_assert!(s.contains(&a));
            prop_assert!(s.contains(&b));
            // Subtracting b takes exactly b's scalar share off.
            let mut t = s.clone();
            t.subtract_all(&b);
            prop_assert!((t.scalar("cpus") - a.scalar("cpus")).abs() < 0.0015);
            prop_assert!((t.scalar("mem") - a.scalar("mem")).abs() < 0.0015);
        }

        #[test]
        fn subtract_never_goes_negative(a in arb_resources(), b in arb_resources()) {
            let mut t = a.clone();
            t.subtract_all(&b);
            prop_assert!(t.scalar("cpus") >= 0.0);
            prop_assert!(a.contains(&t));
        }
    }
}
