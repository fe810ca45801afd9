//! The allocator's own resource representation: what it keeps per agent, allocation and
//! refuse filter, and moves between them during a cycle without allocating.
//!
//! A [`Bundle`] is a short vector of entries sorted by *class*, each a fixed-point scalar
//! (thousandths, Mesos's precision), a normalised range list or a sorted set. A class is
//! what `agora_api::Resources` merges on (name, type, reservation role, disk, provider,
//! revocable and shared flags), interned once in a [`Catalog`]; a *kind* within a class
//! keeps the rest of the metadata (reservation principal and labels, legacy role, ...) of
//! the first resource seen with it, so that converting back gives the wire resource that
//! came in. Allocation roles are not part of a bundle: the allocator keeps bundles per role.
//!
//! The arithmetic mirrors `agora_api::Resources` (merge on class, subtraction saturating at
//! empty, containment per class, empty entries dropped); property tests compare the two.

use crate::HandleHasher;
use agora_api::resources::{normalize_ranges, AllocationInfo, Range, Ranges, Scalar, Set, ValueType};
use agora_api::{Resource, Resources};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

/// An interned role name.
pub(crate) type RoleIdx = u32;

/// Amounts of cpus, mem, disk and gpus (the kinds shares are computed over) in thousandths.
pub(crate) type Qty = [i64; 4];

/// The scalar names shares are computed over, in [`Qty`] order.
pub(crate) const SHARED: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// Thousandths, positive.
    Scalar(i64),
    /// Sorted, disjoint, non-adjacent, non-empty.
    Ranges(Vec<(u64, u64)>),
    /// Sorted, deduplicated, non-empty.
    Set(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    class: u32,
    kind: u32,
    value: Value,
}

/// Resources of one agent without allocation role: entries sorted by class, none empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Bundle {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Class {
    /// `None` when unreserved.
    reserved_for: Option<RoleIdx>,
    /// Index into [`Qty`] for the scalars shares count.
    share_slot: Option<usize>,
    /// Kinds of this class; the first is used for resources of an unknown kind.
    kinds: Vec<u32>,
}

/// Interned roles, classes and kinds. Grows with the distinct names and metadata seen.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    role_ids: HashMap<String, RoleIdx>,
    role_names: Vec<Arc<str>>,
    classes: Vec<Class>,
    /// Value-less wire resources, without allocation role, by kind.
    protos: Vec<Resource>,
    /// Classes by a hash of their identity.
    by_hash: HashMap<u64, Vec<u32>, BuildHasherDefault<HandleHasher>>,
}

/// Whether two resources merge in `agora_api::Resources` arithmetic, allocation role aside.
fn same_class(a: &Resource, b: &Resource) -> bool {
    a.name == b.name
        && a.kind == b.kind
        && a.reservation_role() == b.reservation_role()
        && a.disk == b.disk
        && a.revocable.is_some() == b.revocable.is_some()
        && a.shared.is_some() == b.shared.is_some()
        && a.provider_id == b.provider_id
}

/// Whether two resources of one class carry the same metadata.
fn same_kind(a: &Resource, b: &Resource) -> bool {
    a.role == b.role
        && a.reservation == b.reservation
        && a.reservations == b.reservations
        && a.revocable == b.revocable
        && a.shared == b.shared
}

fn class_hash(r: &Resource) -> u64 {
    let mut h = HandleHasher::default();
    r.name.hash(&mut h);
    r.reservation_role().hash(&mut h);
    (r.kind as u8, r.revocable.is_some(), r.shared.is_some()).hash(&mut h);
    h.finish()
}

/// The value of a wire resource, `None` when empty (as `agora_api::Resources` drops it).
fn value_of(r: &Resource) -> Option<Value> {
    match r.kind {
        ValueType::Scalar => {
            let v = r.scalar.as_ref().map_or(0.0, |s| s.value);
            // NaN fails the comparison too.
            (v > 0.0005).then(|| Value::Scalar((v * 1000.0).round() as i64))
        }
        ValueType::Ranges => {
            let pairs = r.ranges.iter().flat_map(|x| &x.range).map(|x| (x.begin, x.end)).collect();
            Some(normalize_ranges(pairs)).filter(|v| !v.is_empty()).map(Value::Ranges)
        }
        ValueType::Set => {
            let mut items = r.set.as_ref().map(|s| s.item.clone()).unwrap_or_default();
            items.sort();
            items.dedup();
            (!items.is_empty()).then_some(Value::Set(items))
        }
        ValueType::Text => None,
    }
}

impl Catalog {
    /// The handle of a role name, interning it.
    pub(crate) fn role(&mut self, name: &str) -> RoleIdx {
        if let Some(&r) = self.role_ids.get(name) {
            return r;
        }
        let r = RoleIdx::try_from(self.role_names.len()).expect("fewer than 2^32 roles");
        self.role_ids.insert(name.to_string(), r);
        self.role_names.push(Arc::from(name));
        r
    }

    /// The handle of a role name, if it was ever interned.
    pub(crate) fn find_role(&self, name: &str) -> Option<RoleIdx> {
        self.role_ids.get(name).copied()
    }

    pub(crate) fn role_name(&self, r: RoleIdx) -> &Arc<str> {
        &self.role_names[r as usize]
    }

    pub(crate) fn role_count(&self) -> usize {
        self.role_names.len()
    }

    /// Class and kind of a wire resource; new ones are interned only with `intern`.
    fn kind_of(&mut self, r: &Resource, intern: bool) -> Option<(u32, u32)> {
        let hash = class_hash(r);
        let found = self
            .by_hash
            .get(&hash)
            .into_iter()
            .flatten()
            .copied()
            .find(|&c| same_class(&self.protos[self.classes[c as usize].kinds[0] as usize], r));
        if let Some(c) = found {
            let kinds = &self.classes[c as usize].kinds;
            if let Some(&k) = kinds.iter().find(|&&k| same_kind(&self.protos[k as usize], r)) {
                return Some((c, k));
            }
            if !intern {
                return Some((c, kinds[0]));
            }
            let k = self.push_proto(r);
            self.classes[c as usize].kinds.push(k);
            return Some((c, k));
        }
        if !intern {
            return None;
        }
        let c = u32::try_from(self.classes.len()).expect("fewer than 2^32 resource classes");
        let k = self.push_proto(r);
        let reserved_for = r.is_reserved().then(|| r.reservation_role().to_string());
        let reserved_for = reserved_for.map(|role| self.role(&role));
        let share_slot = match r.kind {
            ValueType::Scalar => SHARED.iter().position(|n| *n == r.name),
            _ => None,
        };
        self.classes.push(Class { reserved_for, share_slot, kinds: vec![k] });
        self.by_hash.entry(hash).or_default().push(c);
        Some((c, k))
    }

    fn push_proto(&mut self, r: &Resource) -> u32 {
        let k = u32::try_from(self.protos.len()).expect("fewer than 2^32 resource kinds");
        let mut proto = r.clone().with_allocation(None);
        (proto.scalar, proto.ranges, proto.set) = (None, None, None);
        self.protos.push(proto);
        k
    }

    /// Wire resources as one bundle, allocation roles ignored. Resources of a class never
    /// interned are left out unless `intern` (no agent can hold them).
    pub(crate) fn bundle(&mut self, res: &Resources, intern: bool) -> Bundle {
        let mut out = Bundle::default();
        for r in res.iter() {
            if let (Some(value), Some((class, kind))) = (value_of(r), self.kind_of(r, intern)) {
                out.add_entry(Entry { class, kind, value });
            }
        }
        out
    }

    /// Wire resources grouped by allocation role (`default` when unset), in role name
    /// order. Classes never interned are left out.
    pub(crate) fn bundles_by_role(&mut self, res: &Resources, default: &str) -> Vec<(RoleIdx, Bundle)> {
        let mut out: Vec<(RoleIdx, Bundle)> = Vec::new();
        for r in res.iter() {
            let Some(value) = value_of(r) else { continue };
            let Some((class, kind)) = self.kind_of(r, false) else { continue };
            let role = self.role(r.allocation_role().unwrap_or(default));
            let at = match out.iter().position(|(x, _)| *x == role) {
                Some(at) => at,
                None => {
                    out.push((role, Bundle::default()));
                    out.len() - 1
                }
            };
            out[at].1.add_entry(Entry { class, kind, value });
        }
        out.retain(|(_, b)| !b.is_empty());
        out.sort_by(|a, b| self.role_names[a.0 as usize].cmp(&self.role_names[b.0 as usize]));
        out
    }
}

/// Merges `b` into the normalised ranges `a`.
fn ranges_add(a: &mut Vec<(u64, u64)>, b: &[(u64, u64)]) {
    if b.is_empty() {
        return;
    }
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = if j >= b.len() || (i < a.len() && a[i] <= b[j]) {
            i += 1;
            a[i - 1]
        } else {
            j += 1;
            b[j - 1]
        };
        match out.last_mut() {
            Some(last) if next.0 <= last.1.saturating_add(1) => last.1 = last.1.max(next.1),
            _ => out.push(next),
        }
    }
    *a = out;
}

/// Takes the normalised ranges `b` out of the normalised ranges `a`.
fn ranges_subtract(a: &mut Vec<(u64, u64)>, b: &[(u64, u64)]) {
    let overlaps = |x: &(u64, u64)| {
        let at = b.partition_point(|y| y.1 < x.0);
        b.get(at).is_some_and(|y| y.0 <= x.1)
    };
    if b.is_empty() || !a.iter().any(overlaps) {
        return;
    }
    let mut out = Vec::with_capacity(a.len() + 1);
    let mut j = 0;
    for &(s, e) in a.iter() {
        let mut s = s;
        while j < b.len() && b[j].1 < s {
            j += 1;
        }
        let mut k = j;
        let mut keep = true;
        while k < b.len() && b[k].0 <= e {
            if b[k].0 > s {
                out.push((s, b[k].0 - 1));
            }
            if b[k].1 >= e {
                keep = false;
                break;
            }
            s = b[k].1 + 1;
            k += 1;
        }
        if keep {
            out.push((s, e));
        }
    }
    *a = out;
}

/// Whether the normalised ranges `a` hold all of the normalised ranges `b`.
fn ranges_contain(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    let mut i = 0;
    b.iter().all(|&(s, e)| {
        while i < a.len() && a[i].1 < s {
            i += 1;
        }
        i < a.len() && a[i].0 <= s && e <= a[i].1
    })
}

impl Value {
    fn add(&mut self, other: &Value) {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => *a += b,
            (Value::Ranges(a), Value::Ranges(b)) => ranges_add(a, b),
            (Value::Set(a), Value::Set(b)) => {
                a.extend(b.iter().cloned());
                a.sort();
                a.dedup();
            }
            // One class has one value type.
            _ => {}
        }
    }

    fn subtract(&mut self, other: &Value) {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => *a = (*a - b).max(0),
            (Value::Ranges(a), Value::Ranges(b)) => ranges_subtract(a, b),
            (Value::Set(a), Value::Set(b)) => a.retain(|x| b.binary_search(x).is_err()),
            _ => {}
        }
    }

    fn contains(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => a >= b,
            (Value::Ranges(a), Value::Ranges(b)) => ranges_contain(a, b),
            (Value::Set(a), Value::Set(b)) => b.iter().all(|x| a.binary_search(x).is_ok()),
            _ => false,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Value::Scalar(a) => *a <= 0,
            Value::Ranges(v) => v.is_empty(),
            Value::Set(v) => v.is_empty(),
        }
    }
}

impl Bundle {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, class: u32) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&class, |e| e.class)
    }

    fn add_entry(&mut self, e: Entry) {
        match self.find(e.class) {
            Ok(i) => self.entries[i].value.add(&e.value),
            Err(i) => self.entries.insert(i, e),
        }
    }

    pub(crate) fn add(&mut self, other: &Bundle) {
        if self.entries.is_empty() {
            self.entries.clone_from(&other.entries);
            return;
        }
        for e in &other.entries {
            match self.find(e.class) {
                Ok(i) => self.entries[i].value.add(&e.value),
                Err(i) => self.entries.insert(i, e.clone()),
            }
        }
    }

    /// Like [`Bundle::add`], moving `other`'s entries.
    pub(crate) fn add_owned(&mut self, other: Bundle) {
        if self.entries.is_empty() {
            *self = other;
            return;
        }
        for e in other.entries {
            self.add_entry(e);
        }
    }

    /// Takes `other` out, saturating at empty.
    pub(crate) fn subtract(&mut self, other: &Bundle) {
        for e in &other.entries {
            if let Ok(i) = self.find(e.class) {
                self.entries[i].value.subtract(&e.value);
                if self.entries[i].value.is_empty() {
                    self.entries.remove(i);
                }
            }
        }
    }

    pub(crate) fn contains(&self, other: &Bundle) -> bool {
        let mut i = 0;
        other.entries.iter().all(|e| {
            while i < self.entries.len() && self.entries[i].class < e.class {
                i += 1;
            }
            i < self.entries.len() && self.entries[i].class == e.class && self.entries[i].value.contains(&e.value)
        })
    }

    pub(crate) fn qty(&self, cat: &Catalog) -> Qty {
        let mut q = [0; 4];
        for e in &self.entries {
            if let (Value::Scalar(v), Some(slot)) = (&e.value, cat.classes[e.class as usize].share_slot) {
                q[slot] += v;
            }
        }
        q
    }

    fn usable(e: &Entry, cat: &Catalog, role: RoleIdx) -> bool {
        match cat.classes[e.class as usize].reserved_for {
            None => true,
            Some(r) => r == role,
        }
    }

    /// Whether every entry is unreserved or reserved to `role`.
    pub(crate) fn all_usable_by(&self, cat: &Catalog, role: RoleIdx) -> bool {
        self.entries.iter().all(|e| Bundle::usable(e, cat, role))
    }

    /// The entries usable by `role` (unreserved or reserved to it).
    pub(crate) fn usable_by(&self, cat: &Catalog, role: RoleIdx) -> Bundle {
        Bundle { entries: self.entries.iter().filter(|e| Bundle::usable(e, cat, role)).cloned().collect() }
    }

    /// Moves out the entries usable by `role`.
    pub(crate) fn take_usable(&mut self, cat: &Catalog, role: RoleIdx) -> Bundle {
        let (taken, kept) = std::mem::take(&mut self.entries).into_iter().partition(|e| Bundle::usable(e, cat, role));
        self.entries = kept;
        Bundle { entries: taken }
    }

    /// The entries usable by `role`, with the scalars shares count cut down so that their
    /// amounts stay within `cap` (per [`Qty`] slot; other entries whole).
    pub(crate) fn usable_capped(&self, cat: &Catalog, role: RoleIdx, cap: &Qty) -> Bundle {
        let mut left = *cap;
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in self.entries.iter().filter(|e| Bundle::usable(e, cat, role)) {
            match (&e.value, cat.classes[e.class as usize].share_slot) {
                (Value::Scalar(v), Some(slot)) => {
                    let take = (*v).min(left[slot].max(0));
                    left[slot] -= take;
                    if take > 0 {
                        entries.push(Entry { class: e.class, kind: e.kind, value: Value::Scalar(take) });
                    }
                }
                _ => entries.push(e.clone()),
            }
        }
        Bundle { entries }
    }

    /// As wire resources, each with allocation role `role` (or none).
    pub(crate) fn to_resources(&self, cat: &Catalog, role: Option<&str>) -> Resources {
        Resources(self.entries.iter().map(|e| self.wire(e, cat, role)).collect())
    }

    /// Appends the wire resources to `out`.
    pub(crate) fn extend_resources(&self, cat: &Catalog, role: Option<&str>, out: &mut Resources) {
        out.0.extend(self.entries.iter().map(|e| self.wire(e, cat, role)));
    }

    fn wire(&self, e: &Entry, cat: &Catalog, role: Option<&str>) -> Resource {
        let p = &cat.protos[e.kind as usize];
        let (mut scalar, mut ranges, mut set) = (None, None, None);
        match &e.value {
            Value::Scalar(v) => scalar = Some(Scalar { value: *v as f64 / 1000.0 }),
            Value::Ranges(v) => {
                ranges = Some(Ranges { range: v.iter().map(|&(begin, end)| Range { begin, end }).collect() })
            }
            Value::Set(v) => set = Some(Set { item: v.clone() }),
        }
        // Built field by field rather than cloned from the prototype and overwritten: this
        // is the one place a cycle allocates memory per resource.
        Resource {
            name: p.name.clone(),
            kind: p.kind,
            scalar,
            ranges,
            set,
            role: p.role.clone(),
            allocation_info: role.map(|r| AllocationInfo { role: Some(r.into()) }),
            reservation: p.reservation.clone(),
            reservations: p.reservations.clone(),
            disk: p.disk.clone(),
            revocable: p.revocable.clone(),
            shared: p.shared.clone(),
            provider_id: p.provider_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_api::resources::{ReservationInfo, ReservationType};
    use proptest::prelude::*;

    /// `agora_api` equality of two collections: each contains the other.
    fn same(a: &Resources, b: &Resources) -> bool {
        a.contains(b) && b.contains(a)
    }

    fn api_qty(r: &Resources) -> Qty {
        SHARED.map(|name| (r.scalar(name) * 1000.0).round() as i64)
    }

    fn reserved(mut r: Resource, role: Option<&str>) -> Resource {
        if let Some(role) = role {
            r.reservations.push(ReservationInfo {
                kind: Some(ReservationType::Static),
                role: Some(role.to_string()),
                principal: None,
                labels: None,
            });
        }
        r
    }

    fn arb_resource() -> impl Strategy<Value = Resource> {
        let role = proptest::option::of(prop_oneof![Just("a"), Just("b")]);
        let scalar = (prop_oneof![Just("cpus"), Just("mem"), Just("disk"), Just("gpus"), Just("foo")], 0u32..20_000)
            .prop_map(|(name, v)| Resource::scalar(name, f64::from(v) / 1000.0));
        let ranges = proptest::collection::vec((31000u64..31100, 0u64..10), 0..5)
            .prop_map(|v| Resource::ranges("ports", v.into_iter().map(|(b, l)| (b, b + l)).collect()));
        let set = proptest::collection::vec(prop_oneof![Just("x"), Just("y"), Just("z")], 0..3)
            .prop_map(|v| Resource::set("zones", v.into_iter().map(String::from).collect()));
        (prop_oneof![3 => scalar, 2 => ranges, 1 => set], role).prop_map(|(r, role)| reserved(r, role))
    }

    fn arb_resources() -> impl Strategy<Value = Resources> {
        proptest::collection::vec(arb_resource(), 0..8).prop_map(Resources::from_vec)
    }

    /// A catalog holding every class the generators make, so that none is left out.
    fn catalog() -> Catalog {
        let mut cat = Catalog::default();
        let all = Resources::parse(
            "cpus:1;mem:1;disk:1;gpus:1;foo:1;ports:[1-2];zones:{x};\
             cpus(a):1;mem(a):1;disk(a):1;gpus(a):1;foo(a):1;ports(a):[1-2];zones(a):{x};\
             cpus(b):1;mem(b):1;disk(b):1;gpus(b):1;foo(b):1;ports(b):[1-2];zones(b):{x}",
        )
        .expect("valid resources");
        cat.bundle(&all, true);
        cat
    }

    #[test]
    fn ranges_arithmetic_edges() {
        let mut a = vec![(1, 5), (10, 20), (30, 30)];
        ranges_subtract(&mut a, &[(0, 1), (5, 12), (15, 15), (20, 40)]);
        assert_eq!(a, [(2, 4), (13, 14), (16, 19)]);
        ranges_add(&mut a, &[(5, 12), (20, 20)]);
        assert_eq!(a, [(2, 14), (16, 20)]);
        assert!(ranges_contain(&a, &[(2, 3), (14, 14), (16, 20)]));
        assert!(!ranges_contain(&a, &[(14, 16)]));
        assert!(ranges_contain(&a, &[]));
    }

    #[test]
    fn metadata_survives_the_round_trip() {
        let mut cat = Catalog::default();
        let mut r = reserved(Resource::scalar("cpus", 2.0), Some("web"));
        r.reservations[0].principal = Some("ops".into());
        let res = Resources(vec![r.clone()]);
        let b = cat.bundle(&res, true);
        assert_eq!(b.to_resources(&cat, None), res);
        assert_eq!(b.to_resources(&cat, Some("web")).0[0], r.with_allocation(Some("web")));
        // Another principal is the same class (it merges), but keeps its own metadata.
        let mut other = reserved(Resource::scalar("cpus", 1.0), Some("web"));
        other.reservations[0].principal = Some("dev".into());
        let o = cat.bundle(&Resources(vec![other.clone()]), true);
        assert_eq!(o.to_resources(&cat, None).0[0], other);
        let mut sum = b.clone();
        sum.add(&o);
        assert_eq!(sum.qty(&cat)[0], 3000);
        assert!(sum.contains(&o) && sum.contains(&b));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn round_trip_matches_api(a in arb_resources()) {
            let mut cat = catalog();
            let b = cat.bundle(&a, false);
            let back = b.to_resources(&cat, None);
            prop_assert!(same(&back, &a), "{a} came back as {back}");
            prop_assert_eq!(b.qty(&cat), api_qty(&a));
            prop_assert_eq!(Resources::from_vec(back.0.clone()), back, "already merged");
        }

        #[test]
        fn arithmetic_matches_api(a in arb_resources(), b in arb_resources()) {
            let mut cat = catalog();
            let (ca, cb) = (cat.bundle(&a, false), cat.bundle(&b, false));
            prop_assert_eq!(ca.contains(&cb), a.contains(&b));
            prop_assert_eq!(cb.contains(&ca), b.contains(&a));

            let mut sum = a.clone();
            sum.add_all(&b);
            let mut csum = ca.clone();
            csum.add(&cb);
            prop_assert!(same(&csum.to_resources(&cat, None), &sum), "{a} + {b}");
            prop_assert_eq!(csum.qty(&cat), api_qty(&sum));
            let mut moved = ca.clone();
            moved.add_owned(cb.clone());
            prop_assert_eq!(&moved, &csum);

            let mut diff = a.clone();
            diff.subtract_all(&b);
            let mut cdiff = ca.clone();
            cdiff.subtract(&cb);
            prop_assert!(same(&cdiff.to_resources(&cat, None), &diff), "{a} - {b}");
            prop_assert_eq!(cdiff.qty(&cat), api_qty(&diff));

            for role in ["a", "b", "*"] {
                let r = cat.role(role);
                let usable = ca.usable_by(&cat, r);
                prop_assert!(same(&usable.to_resources(&cat, None), &a.usable_by(role)));
                prop_assert_eq!(ca.all_usable_by(&cat, r), a.iter().all(|x| !x.is_reserved() || x.reservation_role() == role));
                let mut rest = ca.clone();
                let taken = rest.take_usable(&cat, r);
                prop_assert_eq!(&taken, &usable);
                let mut whole = rest.clone();
                whole.add(&taken);
                prop_assert_eq!(&whole, &ca);
            }
        }

        #[test]
        fn allocation_roles_group_like_api(a in arb_resources(), b in arb_resources()) {
            let mut cat = catalog();
            let mut wire = a.allocated_to(Some("r1"));
            wire.add_all(&b.allocated_to(None));
            let groups = cat.bundles_by_role(&wire, "r0");
            for (role, want) in [("r0", &b), ("r1", &a)] {
                let got = groups.iter().find(|(r, _)| cat.role_name(*r).as_ref() == role);
                let got = got.map(|(_, g)| g.to_resources(&cat, Some(role))).unwrap_or_default();
                prop_assert!(same(&got, &want.allocated_to(Some(role))), "{role}: {got}");
            }
        }
    }
}
