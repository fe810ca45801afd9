//! Hierarchical DRF allocator, in the manner of Mesos's `HierarchicalDRFAllocator`.
//!
//! Two levels of dominant resource fairness: roles are ordered by their weighted dominant
//! share, then the frameworks of a role by their dominant share within that role. A cycle
//! walks the active agents (the starting agent rotates between cycles) and, role by role,
//! hands all of an agent's resources usable by the role (unreserved, or reserved to it) to
//! the first framework of that role that is active, has not suppressed the role and has no
//! live refuse filter covering them.
//!
//! Representation: inside, roles and frameworks are small integer handles and resources are
//! [`compact`] bundles (fixed-point scalars, range lists, interned names and metadata), so
//! that a cycle moves an agent's resources into an allocation without allocating memory or
//! hashing strings. `agora_api::Resources` exist only at the edges: what callers pass in is
//! converted once, and an offer's resources are built when it is handed out.
//!
//! Cost: a cycle does work per agent and per offer made, not per agent × framework, except
//! where frameworks' refuse filters must be looked at. Once every framework of a role is
//! found filtered on an agent, the agent remembers it (until the agent gains resources, a
//! framework joins the role or the earliest of those filters expires), so a cluster whose
//! offers were all declined costs a pass over the agents per cycle. Filters are keyed by
//! framework handles, and frameworks that declined the same resources on an agent share one
//! copy of them. docs/benchmarks.md has the figures.
//!
//! **Architecture Invariant:** the allocator performs no I/O, reads no clock (the caller
//! passes `now`) and is deterministic. For every agent, the sum of its allocations plus its
//! available resources equals its total: nothing is handed out twice.
#![forbid(unsafe_code)]

mod compact;

use agora_api::{AgentId, FrameworkId, Resources};
use compact::{Bundle, Catalog, Qty, RoleIdx, SHARED};
use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::Duration;

/// Tunables of the allocator.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Resources with at least this many cpus (or at least the memory below) are offered.
    pub min_allocatable_cpus: f64,
    /// Resources with at least this much memory in MB (or the cpus above) are offered.
    pub min_allocatable_mem: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { min_allocatable_cpus: 0.01, min_allocatable_mem: 32.0 }
    }
}

/// Resources of one agent handed to one framework for one role: an offer to make.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub role: String,
    /// Every resource carries `allocation_info.role == role`.
    pub resources: Resources,
}

fn add_qty(into: &mut Qty, q: &Qty, sign: i64) {
    for (a, b) in into.iter_mut().zip(q) {
        *a = (*a + sign * b).max(0);
    }
}

/// A dominant share as a sortable key: non-negative floats order like their bit patterns.
type Share = u64;

fn share(alloc: &Qty, total: &Qty, weight: f64) -> Share {
    let dominant = alloc.iter().zip(total).filter(|(_, t)| **t > 0);
    (dominant.map(|(a, t)| *a as f64 / *t as f64).fold(0.0, f64::max) / weight).to_bits()
}

/// Whether resources of these amounts are worth offering.
fn allocatable(config: &Config, q: &Qty) -> bool {
    q[0] as f64 / 1000.0 >= config.min_allocatable_cpus || q[1] as f64 / 1000.0 >= config.min_allocatable_mem
}

/// An agent's slot in [`Allocator::agents`]; slots of removed agents are reused.
type AgentIdx = u32;

/// A framework's handle, never reused: small keys for the refuse filters of every agent.
type FwIdx = u32;

/// Hashes the small integer handles above (and pointers) by one multiplication, instead of
/// SipHash.
#[derive(Default)]
pub(crate) struct HandleHasher(u64);

impl Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type HandleSet = HashSet<u32, BuildHasherDefault<HandleHasher>>;
type HandleMap<V> = HashMap<u32, V, BuildHasherDefault<HandleHasher>>;

/// A member of a [`Sorter`]: (share, name, handle), ordered in that order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key(Share, Arc<str>, u32);

/// A [`Key`] as borrowed parts, so that a sorter is searched without cloning the name.
trait KeyParts {
    fn parts(&self) -> (Share, &str, u32);
}

impl KeyParts for Key {
    fn parts(&self) -> (Share, &str, u32) {
        (self.0, &self.1, self.2)
    }
}

impl KeyParts for (Share, &str, u32) {
    fn parts(&self) -> (Share, &str, u32) {
        *self
    }
}

impl<'a> Borrow<dyn KeyParts + 'a> for Key {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl PartialOrd for dyn KeyParts + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Agrees with [`Key`]'s derived order (`Arc<str>` orders as `str`).
impl Ord for dyn KeyParts + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// Members (role or framework handles) kept in (share, name, handle) order; updating one
/// costs O(log n) and moves its name rather than cloning it.
#[derive(Debug, Default)]
struct Sorter {
    order: BTreeSet<Key>,
    share: HandleMap<(Share, Arc<str>)>,
    /// The members in handle order, to walk beside other lists in handle order.
    handles: Vec<u32>,
}

impl Sorter {
    fn set(&mut self, h: u32, name: &Arc<str>, share: Share) {
        match self.share.get_mut(&h) {
            Some((old, _)) if *old == share => {}
            Some((old, name)) => {
                let key = match self.order.take(&(*old, &**name, h) as &dyn KeyParts) {
                    Some(Key(_, taken, _)) => Key(share, taken, h),
                    None => Key(share, Arc::clone(name), h),
                };
                *old = share;
                self.order.insert(key);
            }
            None => {
                self.share.insert(h, (share, Arc::clone(name)));
                if let Err(at) = self.handles.binary_search(&h) {
                    self.handles.insert(at, h);
                }
                self.order.insert(Key(share, Arc::clone(name), h));
            }
        }
    }

    fn remove(&mut self, h: u32) {
        if let Some((old, name)) = self.share.remove(&h) {
            self.order.remove(&(old, &*name, h) as &dyn KeyParts);
            if let Ok(at) = self.handles.binary_search(&h) {
                self.handles.remove(at);
            }
        }
    }

    fn contains(&self, h: u32) -> bool {
        self.share.contains_key(&h)
    }

    fn len(&self) -> usize {
        self.share.len()
    }

    fn is_empty(&self) -> bool {
        self.share.is_empty()
    }

    fn first(&self) -> Option<u32> {
        self.order.first().map(|k| k.2)
    }

    /// The first member after `(share, name, h)`.
    fn after(&self, share: Share, name: &str, h: u32) -> Option<&Key> {
        let key = (share, name, h);
        self.order.range::<dyn KeyParts, _>((Excluded(&key as &dyn KeyParts), Unbounded)).next()
    }
}

/// Per role (by handle).
#[derive(Debug)]
struct RoleState {
    weight: f64,
    /// Allocated to the role, over all frameworks (added or not).
    alloc: Qty,
    /// The offerable frameworks of the role, by dominant share within it. The role is in
    /// [`Allocator::roles`] while this is not empty.
    members: Sorter,
    /// Stamp of the last time a framework joined: a framework can be offered resources that
    /// every earlier member had refused.
    joined: u64,
    /// Quota: what the role is guaranteed (0 = nothing) and may hold at most
    /// ([`NO_LIMIT`] = no limit), per [`Qty`] slot.
    guarantee: Qty,
    limit: Qty,
}

/// A quota limit that limits nothing.
const NO_LIMIT: i64 = i64::MAX;

impl Default for RoleState {
    fn default() -> Self {
        RoleState {
            weight: 1.0,
            alloc: [0; 4],
            members: Sorter::default(),
            joined: 0,
            guarantee: [0; 4],
            limit: [NO_LIMIT; 4],
        }
    }
}

impl RoleState {
    /// What the role still lacks of its guarantee.
    fn shortfall(&self) -> Qty {
        std::array::from_fn(|i| (self.guarantee[i] - self.alloc[i]).max(0))
    }
}

/// A role's quota as the allocator takes it: amounts by resource name (`cpus`, `mem`,
/// `disk`, `gpus`; other names are not subject to quota and are ignored).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quota {
    pub guarantees: BTreeMap<String, f64>,
    pub limits: BTreeMap<String, f64>,
}

/// Resources a framework refused for a role on an agent. Frameworks that refused the same
/// on the same agent share one copy.
#[derive(Debug, PartialEq)]
struct Refused {
    role: RoleIdx,
    resources: Bundle,
}

#[derive(Debug)]
struct Filter {
    framework: FwIdx,
    refused: Arc<Refused>,
    until: Duration,
}

/// An agent's refuse filters.
#[derive(Debug)]
struct Filters {
    /// Ordered by framework handle: one block of memory to scan.
    list: Vec<Filter>,
    /// No filter expires before this.
    expire: Duration,
    /// The last refused resources recorded, to share with the next framework refusing them.
    last_refused: Option<Arc<Refused>>,
}

impl Filters {
    /// Where the framework's filters are in `list`.
    fn of(&self, fw: FwIdx) -> std::ops::Range<usize> {
        let start = self.list.partition_point(|f| f.framework < fw);
        start..start + self.list[start..].partition_point(|f| f.framework == fw)
    }

    /// Drops the filters expired at `now`, if any.
    fn expire(&mut self, now: Duration) {
        if now >= self.expire {
            self.list.retain(|f| f.until > now);
            self.expire = self.list.iter().map(|f| f.until).min().unwrap_or(Duration::MAX);
        }
    }
}

/// Every offerable framework of a role had a live filter covering what the agent has for
/// the role: no need to look at the filters again while this holds.
#[derive(Debug)]
struct AllFiltered {
    /// `RoleState::joined` when found.
    joined: u64,
    /// The earliest expiry of the filters relied on.
    until: Duration,
}

/// What a framework holds on an agent for one role.
#[derive(Debug)]
struct Held {
    fw: FwIdx,
    role: RoleIdx,
    res: Bundle,
}

#[derive(Debug)]
struct Agent {
    id: AgentId,
    total: Bundle,
    available: Bundle,
    /// Sorted by (framework, role); none empty.
    allocations: Vec<Held>,
    active: bool,
    filters: Filters,
    /// Per role. Cleared whenever `available` grows.
    all_filtered: HandleMap<AllFiltered>,
}

impl Agent {
    /// Where the framework's allocations are in `allocations`.
    fn held_of(&self, fw: FwIdx) -> std::ops::Range<usize> {
        let start = self.allocations.partition_point(|h| h.fw < fw);
        start..start + self.allocations[start..].partition_point(|h| h.fw == fw)
    }

    /// Resources came back: filters may no longer cover what the agent has.
    fn gain(&mut self, res: Bundle) {
        if res.is_empty() {
            return;
        }
        self.all_filtered.clear();
        self.available.add_owned(res);
    }
}

/// A framework's settings, while it is added.
#[derive(Debug)]
struct FwState {
    roles: BTreeSet<String>,
    suppressed: BTreeSet<String>,
    active: bool,
    /// Agents that hold (or held: expired filters are dropped lazily) refuse filters of
    /// this framework; a superset, so that its filters can be dropped without a pass over
    /// all agents.
    filtered_on: HandleSet,
}

impl FwState {
    /// The roles the framework can be offered resources for.
    fn offerable_roles(&self) -> impl Iterator<Item = &String> {
        self.roles.iter().filter(|r| self.active && !self.suppressed.contains(*r))
    }
}

/// A framework that is added or holds resources (an agent may report tasks of frameworks
/// not added yet).
#[derive(Debug)]
struct Fw {
    id: FrameworkId,
    /// The id, shared by the sorters.
    name: Arc<str>,
    /// `None` while not added.
    state: Option<FwState>,
    /// Agents it holds resources on.
    agents: HandleSet,
    /// What it holds, per role.
    by_role: Vec<(RoleIdx, Qty)>,
}

/// The hierarchical DRF allocator. See the crate documentation.
#[derive(Debug)]
pub struct Allocator {
    config: Config,
    /// Interned roles and resource classes.
    cat: Catalog,
    /// Agents by slot; `None` for free slots.
    agents: Vec<Option<Agent>>,
    free_slots: Vec<AgentIdx>,
    /// Agent slots in id order: the order of a cycle.
    agent_slots: BTreeMap<AgentId, AgentIdx>,
    fw_ids: HashMap<FrameworkId, FwIdx>,
    fws: HandleMap<Fw>,
    next_framework: FwIdx,
    /// By role handle; may lag behind the catalog (see `sync_roles`).
    role_states: Vec<RoleState>,
    /// Roles with at least one offerable framework, by weighted dominant share.
    roles: Sorter,
    /// Source of `RoleState::joined` stamps.
    stamps: u64,
    /// Sum of all agents' totals.
    total: Qty,
    /// The total changed since the shares were computed.
    shares_stale: bool,
    /// The agent the last full cycle started at.
    last_start: Option<AgentId>,
    /// Roles with a quota (a guarantee or a limit).
    quota_roles: Vec<RoleIdx>,
    /// What all roles together still lack of their guarantees (kept up to date by `track`).
    shortfall_total: Qty,
    /// The [`Qty`] slots some role has a guarantee in.
    guaranteed: [bool; 4],
    /// The roles of `roles` short of their guarantee, in the same order: the first stage.
    short_roles: Sorter,
    /// Sum of every role's allocation.
    allocated_total: Qty,
}

/// Whether refuse filters cover an offer, worked out once per shared [`Refused`].
struct Covers<'a> {
    role: RoleIdx,
    offered: &'a Bundle,
    /// The last one looked at: consecutive filters usually share it.
    last: Option<(usize, bool)>,
    known: HashMap<usize, bool, BuildHasherDefault<HandleHasher>>,
}

impl Covers<'_> {
    fn check(&mut self, f: &Filter) -> bool {
        let key = Arc::as_ptr(&f.refused) as usize;
        if let Some((last, covers)) = self.last {
            if last == key {
                return covers;
            }
        }
        let (role, offered) = (self.role, self.offered);
        let covers =
            *self.known.entry(key).or_insert_with(|| f.refused.role == role && f.refused.resources.contains(offered));
        self.last = Some((key, covers));
        covers
    }
}

/// The first framework of `members`, in DRF order, with no live filter covering `offered`
/// on this agent or, when every one has, the earliest expiry of the filters that refused.
/// Drops the expired filters.
fn pick_framework(
    members: &Sorter,
    filters: &mut Filters,
    role: RoleIdx,
    offered: &Bundle,
    now: Duration,
) -> Result<FwIdx, Duration> {
    filters.expire(now);
    let mut covers = Covers { role, offered, last: None, known: HashMap::default() };
    // Unless most of the agent's filters are other roles' (then members are looked up one
    // by one), one pass over them beside the members, both in handle order, tells whether
    // every member refused: the common case once offers get declined.
    if filters.list.len() <= 4 * members.len() {
        let (mut refusing, mut earliest) = (0, Duration::MAX);
        let mut m = 0;
        for block in filters.list.chunk_by(|a, b| a.framework == b.framework) {
            let fw = block[0].framework;
            // Both lists are usually dense: step, and search only when far behind.
            let rest = &members.handles[m..];
            m += match rest.get(8) {
                Some(h) if *h < fw => rest.partition_point(|h| *h < fw),
                _ => rest.iter().take_while(|h| **h < fw).count(),
            };
            if members.handles.get(m) != Some(&fw) {
                continue;
            }
            if let Some(until) = block.iter().filter(|f| covers.check(f)).map(|f| f.until).max() {
                refusing += 1;
                earliest = earliest.min(until);
            }
        }
        if refusing == members.len() {
            return Err(earliest);
        }
    }
    let mut earliest = Duration::MAX;
    for &Key(_, _, fw) in &members.order {
        match filters.list[filters.of(fw)].iter().filter(|f| covers.check(f)).map(|f| f.until).max() {
            None => return Ok(fw),
            Some(until) => earliest = earliest.min(until),
        }
    }
    Err(earliest)
}

impl Allocator {
    pub fn new(config: Config) -> Self {
        Allocator {
            config,
            cat: Catalog::default(),
            agents: Vec::new(),
            free_slots: Vec::new(),
            agent_slots: BTreeMap::new(),
            fw_ids: HashMap::new(),
            fws: HandleMap::default(),
            next_framework: 0,
            role_states: Vec::new(),
            roles: Sorter::default(),
            stamps: 0,
            total: [0; 4],
            shares_stale: false,
            last_start: None,
            quota_roles: Vec::new(),
            shortfall_total: [0; 4],
            guaranteed: [false; 4],
            short_roles: Sorter::default(),
            allocated_total: [0; 4],
        }
    }

    /// Adds a framework, or resets the settings of a known one.
    pub fn add_framework(&mut self, id: &FrameworkId, roles: &[String], suppressed_roles: &[String], active: bool) {
        let h = self.fw_handle(id);
        self.unlist(h);
        let Some(fw) = self.fws.get_mut(&h) else { return };
        let filtered_on = fw.state.take().map(|s| s.filtered_on).unwrap_or_default();
        let roles = roles.iter().cloned().collect();
        let suppressed = suppressed_roles.iter().cloned().collect();
        fw.state = Some(FwState { roles, suppressed, active, filtered_on });
        self.list(h);
    }

    /// Sets the roles a framework subscribes to and those it suppresses.
    pub fn update_framework(&mut self, id: &FrameworkId, roles: &[String], suppressed_roles: &[String]) {
        self.change(id, |fw| {
            fw.roles = roles.iter().cloned().collect();
            fw.suppressed = suppressed_roles.iter().cloned().collect();
        });
    }

    /// Forgets a framework; what it holds on agents returns to the pool.
    pub fn remove_framework(&mut self, id: &FrameworkId) {
        let Some(&h) = self.fw_ids.get(id) else { return };
        self.unlist(h);
        self.clear_filters(h, None);
        let Some(fw) = self.fws.get_mut(&h) else { return };
        fw.state = None;
        let mut slots: Vec<AgentIdx> = std::mem::take(&mut fw.agents).into_iter().collect();
        slots.sort_unstable();
        for slot in slots {
            let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { continue };
            let range = agent.held_of(h);
            let held: Vec<Held> = agent.allocations.drain(range).collect();
            for Held { role, res, .. } in held {
                let q = res.qty(&self.cat);
                if let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) {
                    agent.gain(res);
                }
                self.track(h, role, &q, -1);
            }
        }
        if let Some(fw) = self.fws.get_mut(&h) {
            fw.by_role.clear();
        }
        self.gc_framework(h);
    }

    pub fn activate_framework(&mut self, id: &FrameworkId) {
        self.change(id, |fw| fw.active = true);
    }

    /// No offers while inactive; what it holds stays. As in Mesos, its filters are dropped.
    pub fn deactivate_framework(&mut self, id: &FrameworkId) {
        self.change(id, |fw| fw.active = false);
        if let Some(&h) = self.fw_ids.get(id) {
            self.clear_filters(h, None);
        }
    }

    /// Stops offers for `roles` (empty: all of the framework's roles).
    pub fn suppress(&mut self, id: &FrameworkId, roles: &[String]) {
        self.change(id, |fw| {
            let all = fw.roles.clone();
            fw.suppressed.extend(if roles.is_empty() { all } else { roles.iter().cloned().collect() });
        });
    }

    /// Resumes offers for `roles` (empty: all) and drops the refuse filters for them.
    pub fn revive(&mut self, id: &FrameworkId, roles: &[String]) {
        let names: BTreeSet<String> = roles.iter().cloned().collect();
        let only = (!names.is_empty()).then_some(&names);
        self.change(id, |fw| fw.suppressed.retain(|r| only.is_some_and(|o| !o.contains(r))));
        // Filters name interned roles only.
        let handles: Vec<RoleIdx> = names.iter().filter_map(|r| self.cat.find_role(r)).collect();
        if let Some(&h) = self.fw_ids.get(id) {
            self.clear_filters(h, only.map(|_| handles.as_slice()));
        }
    }

    /// Adds an agent, replacing one with the same id. `used`: resources in use per framework,
    /// each carrying its allocation role (else the framework's first role); they stay
    /// allocated until recovered.
    pub fn add_agent(&mut self, id: &AgentId, total: &Resources, used: &[(FrameworkId, Resources)]) {
        self.remove_agent(id);
        let total = self.cat.bundle(total, true);
        let mut available = total.clone();
        let mut grants = Vec::new();
        for (fw, res) in used {
            let h = self.fw_handle(fw);
            let state = self.fws.get(&h).and_then(|f| f.state.as_ref());
            let default = state.and_then(|s| s.roles.first()).map_or("*", String::as_str);
            for (role, res) in self.cat.bundles_by_role(res, default) {
                // Only what the agent has can be in use.
                let mut taken = available.clone();
                available.subtract(&res);
                taken.subtract(&available);
                grants.push((h, role, taken));
            }
        }
        self.sync_roles();
        add_qty(&mut self.total, &total.qty(&self.cat), 1);
        self.shares_stale = true;
        let agent = Agent {
            id: id.clone(),
            total,
            available,
            allocations: Vec::new(),
            active: true,
            filters: Filters { list: Vec::new(), expire: Duration::MAX, last_refused: None },
            all_filtered: HandleMap::default(),
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.agents[slot as usize] = Some(agent);
                slot
            }
            None => {
                self.agents.push(Some(agent));
                AgentIdx::try_from(self.agents.len() - 1).expect("fewer than 2^32 agents")
            }
        };
        self.agent_slots.insert(id.clone(), slot);
        for (h, role, taken) in grants {
            if !taken.is_empty() {
                let q = taken.qty(&self.cat);
                self.grant(slot, h, role, taken, &q);
            }
        }
        for (fw, _) in used {
            if let Some(&h) = self.fw_ids.get(fw) {
                self.gc_framework(h);
            }
        }
    }

    /// An offer operation (RESERVE, UNRESERVE, CREATE, DESTROY) changed resources on an
    /// agent: `from` becomes `to` (the same amounts with new metadata) in the agent's total
    /// and in what `holder` holds there (the framework the resources were offered to), or in
    /// what is available when `holder` is `None` (an operator's call). Returns false, and
    /// changes nothing, when the agent or the holder does not have `from`.
    pub fn convert(
        &mut self,
        agent_id: &AgentId,
        holder: Option<&FrameworkId>,
        from: &Resources,
        to: &Resources,
    ) -> bool {
        let Some(&slot) = self.agent_slots.get(agent_id) else { return false };
        let h = match holder {
            Some(f) => match self.fw_ids.get(f) {
                Some(&h) => Some(h),
                None => return false,
            },
            None => None,
        };
        let default = h
            .and_then(|h| self.fws.get(&h))
            .and_then(|f| f.state.as_ref())
            .and_then(|s| s.roles.first().cloned())
            .unwrap_or_else(|| "*".into());
        let from_all = self.cat.bundle(from, false);
        let to_all = self.cat.bundle(to, true);
        let from_groups = self.cat.bundles_by_role(from, &default);
        let to_groups = self.cat.bundles_by_role(to, &default);
        self.sync_roles();
        let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { return false };
        if !agent.total.contains(&from_all) {
            return false;
        }
        match h {
            None => {
                if !agent.available.contains(&from_all) {
                    return false;
                }
                agent.available.subtract(&from_all);
                agent.gain(to_all.clone());
            }
            Some(h) => {
                let holds = from_groups.iter().all(|(role, b)| {
                    agent
                        .allocations
                        .binary_search_by_key(&(h, *role), |x| (x.fw, x.role))
                        .is_ok_and(|i| agent.allocations[i].res.contains(b))
                });
                if !holds {
                    return false;
                }
                for (role, b) in &from_groups {
                    if let Ok(i) = agent.allocations.binary_search_by_key(&(h, *role), |x| (x.fw, x.role)) {
                        agent.allocations[i].res.subtract(b);
                        if agent.allocations[i].res.is_empty() {
                            agent.allocations.remove(i);
                        }
                    }
                }
            }
        }
        if let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) {
            agent.total.subtract(&from_all);
            agent.total.add(&to_all);
        }
        add_qty(&mut self.total, &from_all.qty(&self.cat), -1);
        add_qty(&mut self.total, &to_all.qty(&self.cat), 1);
        if let Some(h) = h {
            for (role, b) in from_groups {
                let q = b.qty(&self.cat);
                self.track(h, role, &q, -1);
            }
            for (role, b) in to_groups {
                let q = b.qty(&self.cat);
                self.grant(slot, h, role, b, &q);
            }
        }
        self.shares_stale = true;
        true
    }

    /// Forgets an agent and everything allocated on it. Frameworks' `filtered_on` may still
    /// name its slot; clearing a framework's filters skips slots without them.
    pub fn remove_agent(&mut self, id: &AgentId) {
        let Some(slot) = self.agent_slots.remove(id) else { return };
        let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::take) else { return };
        self.free_slots.push(slot);
        for held in &agent.allocations {
            let q = held.res.qty(&self.cat);
            self.track(held.fw, held.role, &q, -1);
        }
        for (i, held) in agent.allocations.iter().enumerate() {
            if i == 0 || agent.allocations[i - 1].fw != held.fw {
                self.forget_usage(held.fw, slot);
            }
        }
        add_qty(&mut self.total, &agent.total.qty(&self.cat), -1);
        self.shares_stale = true;
    }

    pub fn activate_agent(&mut self, id: &AgentId) {
        if let Some(agent) = self.agent_mut(id) {
            agent.active = true;
        }
    }

    /// No offers from an inactive agent; its allocations stay.
    pub fn deactivate_agent(&mut self, id: &AgentId) {
        if let Some(agent) = self.agent_mut(id) {
            agent.active = false;
        }
    }

    /// Takes back resources (declined, unused, freed or rescinded); only what the framework
    /// holds on the agent returns to the pool. Resources without an allocation role count as
    /// the framework's first role. `refuse: Some(d)` keeps these resources, or any subset of
    /// them, from being offered to the framework on this agent until `now + d`.
    pub fn recover(
        &mut self,
        framework_id: &FrameworkId,
        agent_id: &AgentId,
        resources: &Resources,
        refuse: Option<Duration>,
        now: Duration,
    ) {
        let Some(&slot) = self.agent_slots.get(agent_id) else { return };
        let Some(&h) = self.fw_ids.get(framework_id) else { return };
        let state = self.fws.get(&h).and_then(|f| f.state.as_ref());
        let default = state.and_then(|s| s.roles.first()).map_or("*", String::as_str);
        // Resources of classes no agent has are left out: nobody holds them, and a filter
        // covers an offer by what the offer holds.
        let groups = self.cat.bundles_by_role(resources, default);
        self.sync_roles();
        let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        let range = agent.held_of(h);
        // A declined or rescinded offer comes back whole, as the allocator made it: no need
        // to work out what was held.
        let held = &agent.allocations[range.clone()];
        let whole = !held.is_empty()
            && held.len() == groups.len()
            && groups.iter().all(|(role, b)| held.iter().any(|x| x.role == *role && x.res == *b));
        if whole {
            let held: Vec<Held> = agent.allocations.drain(range).collect();
            for Held { role, res, .. } in held {
                let q = res.qty(&self.cat);
                if let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) {
                    agent.gain(res);
                }
                self.track(h, role, &q, -1);
            }
            self.forget_usage(h, slot);
        } else if !range.is_empty() {
            for (role, res) in &groups {
                let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { return };
                let Ok(i) = agent.allocations.binary_search_by_key(&(h, *role), |x| (x.fw, x.role)) else { continue };
                let alloc = &mut agent.allocations[i].res;
                let mut released = alloc.clone();
                alloc.subtract(res);
                released.subtract(alloc);
                if alloc.is_empty() {
                    agent.allocations.remove(i);
                }
                let q = released.qty(&self.cat);
                agent.gain(released);
                self.track(h, *role, &q, -1);
            }
            if self.agents.get(slot as usize).and_then(Option::as_ref).is_some_and(|a| a.held_of(h).is_empty()) {
                self.forget_usage(h, slot);
            }
        }
        let Some(d) = refuse.filter(|d| !d.is_zero()) else { return };
        let (Some(state), Some(agent)) = (
            self.fws.get_mut(&h).and_then(|f| f.state.as_mut()),
            self.agents.get_mut(slot as usize).and_then(Option::as_mut),
        ) else {
            return;
        };
        let until = now.saturating_add(d);
        let filters = &mut agent.filters;
        filters.expire(now);
        filters.expire = filters.expire.min(until);
        let at = filters.of(h).end;
        let mut added = Vec::new();
        for (role, resources) in groups {
            let refused = Refused { role, resources };
            let refused = match &filters.last_refused {
                Some(last) if **last == refused => Arc::clone(last),
                _ => Arc::clone(filters.last_refused.insert(Arc::new(refused))),
            };
            added.push(Filter { framework: h, refused, until });
        }
        if !added.is_empty() {
            filters.list.splice(at..at, added);
            state.filtered_on.insert(slot);
        }
    }

    /// Runs one allocation cycle over all agents, starting one agent further than the last
    /// cycle did. Returns the offers to make.
    pub fn allocate(&mut self, now: Duration) -> Vec<Allocation> {
        let after_last = self
            .last_start
            .as_ref()
            .and_then(|l| self.agent_slots.range::<AgentId, _>((Excluded(l), Unbounded)).next());
        let Some(start) = after_last.or_else(|| self.agent_slots.iter().next()).map(|(k, _)| k.clone()) else {
            return Vec::new();
        };
        let order: Vec<AgentIdx> =
            self.agent_slots.range(&start..).chain(self.agent_slots.range(..&start)).map(|(_, s)| *s).collect();
        self.last_start = Some(start);
        self.refresh_shares();
        let mut out = Vec::with_capacity(order.len());
        for slot in order {
            self.allocate_agent(slot, now, &mut out);
        }
        out
    }

    /// Like [`Allocator::allocate`], over the given agents only, in the given order.
    pub fn allocate_agents(&mut self, agents: &[AgentId], now: Duration) -> Vec<Allocation> {
        self.refresh_shares();
        let mut out = Vec::new();
        let mut seen = HandleSet::default();
        for slot in agents.iter().filter_map(|id| self.agent_slots.get(id).copied()).collect::<Vec<_>>() {
            if seen.insert(slot) {
                self.allocate_agent(slot, now, &mut out);
            }
        }
        out
    }

    /// Sets a role's weight (default 1). Non-positive or non-finite weights are ignored.
    pub fn set_weight(&mut self, role: &str, weight: f64) {
        if weight.is_finite() && weight > 0.0 {
            let r = self.role(role);
            self.role_states[r as usize].weight = weight;
            self.reshare(None, r);
        }
    }

    /// Sets a role's quota (replacing the previous one); an empty [`Quota`] removes it.
    ///
    /// Guarantees are met first: in each agent's turn, roles short of their guarantee are
    /// offered (up to what they lack) before fair sharing, and no offer leaves the cluster's
    /// unallocated resources below what the other roles still lack of their guarantees (the
    /// headroom). Limits cap what a role holds, offered or in use. Amounts count the role's
    /// allocations, reserved resources included.
    pub fn set_quota(&mut self, role: &str, quota: &Quota) {
        let to_qty = |m: &BTreeMap<String, f64>, default: i64| -> Qty {
            std::array::from_fn(|i| m.get(SHARED[i]).map_or(default, |v| (v.max(0.0) * 1000.0).round() as i64))
        };
        let r = self.role(role);
        let rs = &mut self.role_states[r as usize];
        rs.guarantee = to_qty(&quota.guarantees, 0);
        rs.limit = to_qty(&quota.limits, NO_LIMIT);
        let has = rs.guarantee.iter().any(|g| *g > 0) || rs.limit.iter().any(|l| *l != NO_LIMIT);
        self.quota_roles.retain(|x| *x != r);
        if has {
            self.quota_roles.push(r);
        }
        self.shortfall_total = [0; 4];
        self.guaranteed = [false; 4];
        for &q in &self.quota_roles {
            let Some(s) = self.role_states.get(q as usize) else { continue };
            add_qty(&mut self.shortfall_total, &s.shortfall(), 1);
            for (g, x) in self.guaranteed.iter_mut().zip(&s.guarantee) {
                *g |= *x > 0;
            }
        }
        self.sync_short(r);
        // Agents that found every framework filtered may now offer differently.
        for agent in self.agents.iter_mut().flatten() {
            agent.all_filtered.remove(&r);
        }
    }

    /// How much `role` may be offered now, per [`Qty`] slot, under quotas: `None` when no
    /// quota constrains it. In stage 1 (guarantees first) only a role short of its
    /// guarantee gets anything, and at most what it lacks in the slots it is guaranteed.
    fn quota_cap(&self, role: RoleIdx, stage1: bool) -> Option<Qty> {
        if self.quota_roles.is_empty() {
            return None;
        }
        let rs = self.role_states.get(role as usize)?;
        let own = rs.shortfall();
        if stage1 && own.iter().all(|x| *x == 0) {
            return Some([0; 4]);
        }
        // Headroom: what every other role still lacks of its guarantee must stay unallocated.
        Some(std::array::from_fn(|i| {
            let mut cap = if rs.limit[i] == NO_LIMIT { NO_LIMIT } else { (rs.limit[i] - rs.alloc[i]).max(0) };
            if self.guaranteed[i] {
                let unallocated = (self.total[i] - self.allocated_total[i]).max(0);
                let others = self.shortfall_total[i] - own[i];
                cap = cap.min((unallocated - others).max(0));
            }
            if stage1 && rs.guarantee[i] > 0 {
                cap = cap.min(own[i]);
            }
            cap
        }))
    }

    /// Everything allocated to the framework (offered or in use) over all agents.
    pub fn allocated(&self, framework_id: &FrameworkId) -> Resources {
        let Some((&h, fw)) = self.fw_ids.get(framework_id).and_then(|h| Some((h, self.fws.get(h)?))) else {
            return Resources::new();
        };
        let mut slots: Vec<AgentIdx> = fw.agents.iter().copied().collect();
        slots.sort_unstable();
        let mut sums: Vec<(RoleIdx, Bundle)> = Vec::new();
        for slot in slots {
            let Some(agent) = self.agents.get(slot as usize).and_then(Option::as_ref) else { continue };
            for held in &agent.allocations[agent.held_of(h)] {
                match sums.iter_mut().find(|(r, _)| *r == held.role) {
                    Some((_, sum)) => sum.add(&held.res),
                    None => sums.push((held.role, held.res.clone())),
                }
            }
        }
        sums.sort_by(|a, b| self.cat.role_name(a.0).cmp(self.cat.role_name(b.0)));
        let mut out = Resources::new();
        for (role, sum) in &sums {
            sum.extend_resources(&self.cat, Some(self.cat.role_name(*role)), &mut out);
        }
        out
    }

    /// What the framework holds on one agent (empty if nothing or unknown).
    pub fn allocation_on(&self, framework_id: &FrameworkId, agent_id: &AgentId) -> Resources {
        let mut out = Resources::new();
        if let (Some(&h), Some(agent)) = (self.fw_ids.get(framework_id), self.agent(agent_id)) {
            for held in &agent.allocations[agent.held_of(h)] {
                held.res.extend_resources(&self.cat, Some(self.cat.role_name(held.role)), &mut out);
            }
        }
        out
    }

    /// The unallocated resources of an agent.
    pub fn available(&self, agent_id: &AgentId) -> Option<Resources> {
        self.agent(agent_id).map(|a| a.available.to_resources(&self.cat, None))
    }

    pub fn agent_count(&self) -> usize {
        self.agent_slots.len()
    }

    pub fn framework_count(&self) -> usize {
        self.fws.values().filter(|f| f.state.is_some()).count()
    }

    fn agent(&self, id: &AgentId) -> Option<&Agent> {
        let slot = *self.agent_slots.get(id)?;
        self.agents.get(slot as usize)?.as_ref()
    }

    fn agent_mut(&mut self, id: &AgentId) -> Option<&mut Agent> {
        let slot = *self.agent_slots.get(id)?;
        self.agents.get_mut(slot as usize)?.as_mut()
    }

    /// The handle of a role, interning it.
    fn role(&mut self, name: &str) -> RoleIdx {
        let r = self.cat.role(name);
        self.sync_roles();
        r
    }

    /// Gives every role the catalog interned (reservations, allocation roles) its state.
    fn sync_roles(&mut self) {
        let n = self.cat.role_count();
        if self.role_states.len() < n {
            self.role_states.resize_with(n, RoleState::default);
        }
    }

    /// The handle of a framework, making one for an id not seen yet.
    fn fw_handle(&mut self, id: &FrameworkId) -> FwIdx {
        if let Some(&h) = self.fw_ids.get(id) {
            return h;
        }
        let h = self.next_framework;
        self.next_framework = h.checked_add(1).expect("fewer than 2^32 framework registrations");
        self.fw_ids.insert(id.clone(), h);
        let fw = Fw {
            id: id.clone(),
            name: Arc::from(id.as_str()),
            state: None,
            agents: HandleSet::default(),
            by_role: Vec::new(),
        };
        self.fws.insert(h, fw);
        h
    }

    /// Forgets a framework that is neither added nor holds anything.
    fn gc_framework(&mut self, h: FwIdx) {
        if let Some(fw) = self.fws.get(&h).filter(|f| f.state.is_none() && f.agents.is_empty()) {
            self.fw_ids.remove(&fw.id);
            self.fws.remove(&h);
        }
    }

    /// Offers what the agent has left, role by role in DRF order; with quotas, first to the
    /// roles short of their guarantees, then to all within limits and headroom.
    fn allocate_agent(&mut self, slot: AgentIdx, now: Duration, out: &mut Vec<Allocation>) {
        if self.quota_roles.is_empty() {
            self.allocate_stage(slot, now, None, out);
        } else {
            self.allocate_stage(slot, now, Some(true), out);
            self.allocate_stage(slot, now, Some(false), out);
        }
    }

    /// One pass over the roles for an agent. `stage1`: `None` without quotas, else whether
    /// this is the guarantees-first pass.
    fn allocate_stage(&mut self, slot: AgentIdx, now: Duration, stage1: Option<bool>, out: &mut Vec<Allocation>) {
        let mut cursor: Option<(Share, RoleIdx)> = None;
        loop {
            // A role that gets resources moves back, with nothing left to use here, so
            // meeting it again is harmless.
            let sorter = if stage1 == Some(true) { &self.short_roles } else { &self.roles };
            let next = match cursor {
                None => sorter.order.first(),
                Some((share, r)) => sorter.after(share, self.cat.role_name(r), r),
            };
            let Some(&Key(share, _, role)) = next else { return };
            cursor = Some((share, role));
            let Some(agent) = self.agents.get(slot as usize).and_then(Option::as_ref) else { return };
            let available = agent.available.qty(&self.cat);
            if !agent.active || !allocatable(&self.config, &available) {
                return;
            }
            if stage1 == Some(true)
                && self.role_states.get(role as usize).is_none_or(|rs| rs.shortfall().iter().all(|x| *x == 0))
            {
                continue;
            }
            let cap = stage1.and_then(|s1| self.quota_cap(role, s1));
            let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { return };
            let Some(rs) = self.role_states.get(role as usize) else { continue };
            if agent.all_filtered.get(&role).is_some_and(|f| f.joined == rs.joined && now < f.until) {
                continue;
            }
            let all_usable = cap.is_none() && agent.available.all_usable_by(&self.cat, role);
            let (usable, q) = match (all_usable, &cap) {
                (true, _) => (Cow::Borrowed(&agent.available), available),
                (false, None) => {
                    let usable = agent.available.usable_by(&self.cat, role);
                    let q = usable.qty(&self.cat);
                    (Cow::Owned(usable), q)
                }
                (false, Some(cap)) => {
                    let usable = agent.available.usable_capped(&self.cat, role, cap);
                    let q = usable.qty(&self.cat);
                    (Cow::Owned(usable), q)
                }
            };
            if !allocatable(&self.config, &q) {
                continue;
            }
            let fw = if agent.filters.list.is_empty() {
                rs.members.first()
            } else {
                match pick_framework(&rs.members, &mut agent.filters, role, &usable, now) {
                    Ok(fw) => Some(fw),
                    Err(until) => {
                        // A capped offer is not all the role could use here: don't remember.
                        if cap.is_none() {
                            agent.all_filtered.insert(role, AllFiltered { joined: rs.joined, until });
                        }
                        None
                    }
                }
            };
            let Some(fw) = fw else { continue };
            // What the role can use is exactly the entries that go: move them.
            let taken = match (all_usable, usable) {
                (true, _) => std::mem::take(&mut agent.available),
                (false, Cow::Owned(capped)) if cap.is_some() => {
                    agent.available.subtract(&capped);
                    capped
                }
                (false, _) => agent.available.take_usable(&self.cat, role),
            };
            let name = self.cat.role_name(role);
            let resources = taken.to_resources(&self.cat, Some(name));
            let (agent_id, role_name) = (agent.id.clone(), name.to_string());
            self.grant(slot, fw, role, taken, &q);
            if let Some(f) = self.fws.get(&fw) {
                out.push(Allocation { framework_id: f.id.clone(), agent_id, role: role_name, resources });
            }
        }
    }

    /// Records `res` for the framework and role, already taken from the agent's available.
    /// `q`: the amounts of `res`.
    fn grant(&mut self, slot: AgentIdx, fw: FwIdx, role: RoleIdx, res: Bundle, q: &Qty) {
        if let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) {
            match agent.allocations.binary_search_by_key(&(fw, role), |x| (x.fw, x.role)) {
                Ok(i) => agent.allocations[i].res.add_owned(res),
                Err(i) => agent.allocations.insert(i, Held { fw, role, res }),
            }
        }
        if let Some(f) = self.fws.get_mut(&fw) {
            f.agents.insert(slot);
        }
        self.track(fw, role, q, 1);
    }

    /// Adds (`sign` 1) or takes off (-1) allocated amounts in the share accounting.
    fn track(&mut self, fw: FwIdx, role: RoleIdx, q: &Qty, sign: i64) {
        self.sync_roles();
        if let Some(rs) = self.role_states.get_mut(role as usize) {
            let before = rs.shortfall();
            add_qty(&mut rs.alloc, q, sign);
            if rs.guarantee.iter().any(|g| *g > 0) {
                add_qty(&mut self.shortfall_total, &before, -1);
                add_qty(&mut self.shortfall_total, &rs.shortfall(), 1);
            }
        }
        add_qty(&mut self.allocated_total, q, sign);
        if let Some(f) = self.fws.get_mut(&fw) {
            match f.by_role.iter_mut().find(|(r, _)| *r == role) {
                Some((_, x)) => add_qty(x, q, sign),
                None => {
                    let mut x = [0; 4];
                    add_qty(&mut x, q, sign);
                    f.by_role.push((role, x));
                }
            }
        }
        self.reshare(Some(fw), role);
    }

    /// The framework no longer holds anything on the agent.
    fn forget_usage(&mut self, fw: FwIdx, slot: AgentIdx) {
        if let Some(f) = self.fws.get_mut(&fw) {
            f.agents.remove(&slot);
            if f.agents.is_empty() {
                f.by_role.clear();
            }
        }
        self.gc_framework(fw);
    }

    /// Re-sorts a role, and a framework within it, after their allocation changed.
    fn reshare(&mut self, fw: Option<FwIdx>, role: RoleIdx) {
        let Some(rs) = self.role_states.get(role as usize) else { return };
        if self.roles.contains(role) {
            self.roles.set(role, self.cat.role_name(role), share(&rs.alloc, &self.total, rs.weight));
        }
        if !self.quota_roles.is_empty() {
            self.sync_short(role);
        }
        let Some(rs) = self.role_states.get_mut(role as usize) else { return };
        let Some(h) = fw.filter(|h| rs.members.contains(*h)) else { return };
        let Some(f) = self.fws.get(&h) else { return };
        let alloc = f.by_role.iter().find(|(r, _)| *r == role).map_or([0; 4], |x| x.1);
        rs.members.set(h, &f.name, share(&alloc, &self.total, 1.0));
    }

    /// Keeps `short_roles` in step with `roles` for one role.
    fn sync_short(&mut self, role: RoleIdx) {
        let short = self.role_states.get(role as usize).is_some_and(|rs| rs.shortfall().iter().any(|x| *x > 0));
        match self.roles.share.get(&role) {
            Some((share, name)) if short => {
                let (share, name) = (*share, Arc::clone(name));
                self.short_roles.set(role, &name, share);
            }
            _ => self.short_roles.remove(role),
        }
    }

    /// Recomputes every share after the cluster total changed: O(roles + frameworks).
    fn refresh_shares(&mut self) {
        if !std::mem::take(&mut self.shares_stale) {
            return;
        }
        let listed: Vec<(RoleIdx, FwIdx)> = self
            .role_states
            .iter()
            .enumerate()
            .flat_map(|(r, rs)| rs.members.share.keys().map(move |h| (r as RoleIdx, *h)))
            .collect();
        for (role, fw) in listed {
            self.reshare(Some(fw), role);
        }
    }

    /// Applies a change to an added framework, keeping the sorters in step.
    fn change(&mut self, id: &FrameworkId, f: impl FnOnce(&mut FwState)) {
        let Some(&h) = self.fw_ids.get(id) else { return };
        if self.fws.get(&h).is_some_and(|fw| fw.state.is_some()) {
            self.unlist(h);
            if let Some(state) = self.fws.get_mut(&h).and_then(|fw| fw.state.as_mut()) {
                f(state);
            }
            self.list(h);
        }
    }

    /// Takes a framework out of the sorters.
    fn unlist(&mut self, h: FwIdx) {
        let Some(state) = self.fws.get(&h).and_then(|f| f.state.as_ref()) else { return };
        for name in &state.roles {
            let Some(r) = self.cat.find_role(name) else { continue };
            let Some(rs) = self.role_states.get_mut(r as usize) else { continue };
            if rs.members.contains(h) {
                rs.members.remove(h);
                if rs.members.is_empty() {
                    self.roles.remove(r);
                    self.short_roles.remove(r);
                }
            }
        }
    }

    /// Puts a framework in the sorters of the roles it can be offered resources for.
    fn list(&mut self, h: FwIdx) {
        let Some(fw) = self.fws.get(&h) else { return };
        let Some(state) = fw.state.as_ref() else { return };
        let name = Arc::clone(&fw.name);
        let roles: Vec<String> = state.offerable_roles().cloned().collect();
        for role in roles {
            let r = self.role(&role);
            // Placeholder shares, corrected at once by reshare.
            if !self.roles.contains(r) {
                self.roles.set(r, self.cat.role_name(r), 0);
            }
            self.stamps += 1;
            let rs = &mut self.role_states[r as usize];
            rs.joined = self.stamps;
            rs.members.set(h, &name, 0);
            self.reshare(Some(h), r);
        }
    }

    /// Drops a framework's refuse filters for `roles` (all when `None`).
    fn clear_filters(&mut self, h: FwIdx, roles: Option<&[RoleIdx]>) {
        let Some(state) = self.fws.get_mut(&h).and_then(|f| f.state.as_mut()) else { return };
        let agents = &mut self.agents;
        state.filtered_on.retain(|slot| {
            let Some(agent) = agents.get_mut(*slot as usize).and_then(Option::as_mut) else { return false };
            let filters = &mut agent.filters;
            let range = filters.of(h);
            let kept: Vec<Filter> = filters
                .list
                .drain(range.clone())
                .filter(|f| roles.is_some_and(|r| !r.contains(&f.refused.role)))
                .collect();
            let any = !kept.is_empty();
            filters.list.splice(range.start..range.start, kept);
            any
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(text: &str) -> Resources {
        Resources::parse(text).expect("valid resources")
    }
    fn fid(s: &str) -> FrameworkId {
        FrameworkId::new(s)
    }
    fn aid(s: &str) -> AgentId {
        AgentId::new(s)
    }
    fn roles(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }
    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
    /// An allocator with these active frameworks `(id, roles)` and agents `(id, resources)`.
    fn setup(fws: &[(&str, &[&str])], agents: &[(&str, &str)]) -> Allocator {
        let mut a = Allocator::new(Config::default());
        for (id, r) in fws {
            a.add_framework(&fid(id), &roles(r), &[], true);
        }
        for (id, r) in agents {
            a.add_agent(&aid(id), &res(r), &[]);
        }
        a
    }
    /// `agent>framework` for each allocation, in order.
    fn got(allocs: &[Allocation]) -> Vec<String> {
        allocs.iter().map(|a| format!("{}>{}", a.agent_id, a.framework_id)).collect()
    }

    /// `allocatable` over wire resources.
    fn api_allocatable(config: &Config, r: &Resources) -> bool {
        r.scalar("cpus") >= config.min_allocatable_cpus || r.scalar("mem") >= config.min_allocatable_mem
    }

    impl Allocator {
        fn framework(&self, id: &FrameworkId) -> Option<&FwState> {
            self.fw_ids.get(id).and_then(|h| self.fws.get(h)).and_then(|f| f.state.as_ref())
        }

        /// Checks the internal invariants, panicking otherwise.
        fn check(&self) {
            let mut short = [0; 4];
            for &q in &self.quota_roles {
                add_qty(&mut short, &self.role_states[q as usize].shortfall(), 1);
            }
            assert_eq!(short, self.shortfall_total, "shortfall bookkeeping");
            for (r, rs) in self.role_states.iter().enumerate() {
                let listed = self.roles.contains(r as RoleIdx) && rs.shortfall().iter().any(|x| *x > 0);
                assert_eq!(listed, self.short_roles.contains(r as RoleIdx), "short roles list, role {r}");
            }
            let mut by_fw: HashMap<(FwIdx, RoleIdx), Qty> = HashMap::new();
            let mut by_role: HashMap<RoleIdx, Qty> = HashMap::new();
            let mut total = [0; 4];
            assert_eq!(self.agent_slots.len(), self.agents.iter().flatten().count());
            for (id, slot) in &self.agent_slots {
                let agent = self.agents[*slot as usize].as_ref().expect("slot in use");
                assert_eq!(&agent.id, id);
                add_qty(&mut total, &agent.total.qty(&self.cat), 1);
                // Summed as wire resources: an independent check of the bundles.
                let mut sum = agent.available.to_resources(&self.cat, None);
                let mut ports = sum.ranges_of("ports");
                let keys: Vec<_> = agent.allocations.iter().map(|h| (h.fw, h.role)).collect();
                assert!(keys.windows(2).all(|w| w[0] < w[1]), "{id}: allocation order");
                for held in &agent.allocations {
                    let fw = &self.fws[&held.fw];
                    assert!(!held.res.is_empty() && fw.agents.contains(slot), "{} on {id}", fw.id);
                    let wire = held.res.to_resources(&self.cat, None);
                    sum.add_all(&wire);
                    ports.extend(wire.ranges_of("ports"));
                    add_qty(by_role.entry(held.role).or_default(), &held.res.qty(&self.cat), 1);
                    add_qty(by_fw.entry((held.fw, held.role)).or_default(), &held.res.qty(&self.cat), 1);
                }
                let agent_total = agent.total.to_resources(&self.cat, None);
                assert!(sum.contains(&agent_total) && agent_total.contains(&sum), "{id}: {sum}");
                ports.sort_unstable();
                assert!(ports.windows(2).all(|w| w[0].1 < w[1].0), "{id}: ports overlap: {ports:?}");
                let filters = &agent.filters.list;
                assert!(filters.windows(2).all(|w| w[0].framework <= w[1].framework), "{id}: filter order");
                for f in filters {
                    let state = self.fws.get(&f.framework).and_then(|x| x.state.as_ref()).expect("an added framework");
                    assert!(state.filtered_on.contains(slot), "{} filters {id}", f.framework);
                }
            }
            assert_eq!(total, self.total);
            for (r, rs) in self.role_states.iter().enumerate() {
                assert_eq!(rs.alloc, by_role.get(&(r as RoleIdx)).copied().unwrap_or_default(), "role {r}");
            }
            assert_eq!(self.fw_ids.len(), self.fws.len());
            for (h, fw) in &self.fws {
                assert_eq!(self.fw_ids.get(&fw.id), Some(h));
                assert!(fw.state.is_some() || !fw.agents.is_empty(), "{} kept for nothing", fw.id);
                assert!(fw
                    .agents
                    .iter()
                    .all(|s| self.agents[*s as usize].as_ref().is_some_and(|a| !a.held_of(*h).is_empty())));
                for (role, q) in &fw.by_role {
                    let want = by_fw.get(&(*h, *role)).copied().unwrap_or_default();
                    assert_eq!(*q, want, "{} in role {role}", fw.id);
                }
            }
            let mut offerable = BTreeSet::new();
            for fw in self.fws.values() {
                let Some(state) = &fw.state else { continue };
                offerable.extend(state.offerable_roles().map(|r| (r.clone(), fw.id.clone())));
            }
            let mut listed = BTreeSet::new();
            for (r, rs) in self.role_states.iter().enumerate() {
                let r = r as RoleIdx;
                assert_eq!(rs.members.order.len(), rs.members.len());
                let mut handles: Vec<u32> = rs.members.share.keys().copied().collect();
                handles.sort_unstable();
                assert_eq!(handles, rs.members.handles, "role {r} member handles");
                assert_eq!(self.roles.contains(r), !rs.members.is_empty(), "role {r} listed");
                for (h, (s, _)) in &rs.members.share {
                    let fw = &self.fws[h];
                    listed.insert((self.cat.role_name(r).to_string(), fw.id.clone()));
                    if !self.shares_stale {
                        let alloc = fw.by_role.iter().find(|x| x.0 == r).map_or([0; 4], |x| x.1);
                        assert_eq!(*s, share(&alloc, &self.total, 1.0), "{} share in {r}", fw.id);
                    }
                }
                if !self.shares_stale && self.roles.contains(r) {
                    assert_eq!(self.roles.share[&r].0, share(&rs.alloc, &self.total, rs.weight), "role {r} share");
                }
            }
            assert_eq!(offerable, listed);
            assert_eq!(self.roles.order.len(), self.roles.len());
        }

        /// (agent, role) pairs where some offerable framework of the role has no live filter
        /// covering what the agent has for the role: none may be left after a full cycle.
        /// Looks at every filter, ignoring what `all_filtered` remembers, and compares as
        /// wire resources.
        fn left_unoffered(&self, now: Duration) -> Vec<(AgentId, String)> {
            let mut out = Vec::new();
            for agent in self.agents.iter().flatten().filter(|a| a.active) {
                for (r, rs) in self.role_states.iter().enumerate().filter(|(_, rs)| !rs.members.is_empty()) {
                    let (r, name) = (r as RoleIdx, self.cat.role_name(r as RoleIdx));
                    let usable = agent.available.to_resources(&self.cat, None).usable_by(name);
                    if !api_allocatable(&self.config, &usable) {
                        continue;
                    }
                    let offered = usable.allocated_to(Some(name));
                    let refused = |h: &FwIdx| {
                        agent.filters.list.iter().any(|f| {
                            f.framework == *h
                                && f.until > now
                                && f.refused.role == r
                                && f.refused.resources.to_resources(&self.cat, Some(name)).contains(&offered)
                        })
                    };
                    if !rs.members.share.keys().all(refused) {
                        out.push((agent.id.clone(), name.to_string()));
                    }
                }
            }
            out
        }

        fn filter_count(&self) -> usize {
            self.agents.iter().flatten().map(|a| a.filters.list.len()).sum()
        }
    }

    #[test]
    fn the_allocator_can_move_between_threads() {
        fn send<T: Send + Sync>() {}
        send::<Allocator>();
    }

    #[test]
    fn frameworks_within_a_role_follow_drf() {
        let mut a = setup(&[("f1", &["r"]), ("f2", &["r"])], &[("a1", "cpus:2;mem:1024")]);
        assert_eq!(got(&a.allocate(secs(0))), ["a1>f1"], "tie broken by id");
        a.add_agent(&aid("a2"), &res("cpus:1;mem:512"), &[]);
        assert_eq!(got(&a.allocate_agents(&[aid("a2")], secs(0))), ["a2>f2"]);
        // f1 holds 2 of 4 cpus, f2 1 of 4.
        a.add_agent(&aid("a3"), &res("cpus:1;mem:512"), &[]);
        assert_eq!(got(&a.allocate_agents(&[aid("a3")], secs(0))), ["a3>f2"]);
        assert_eq!(a.allocated(&fid("f2")).scalar("cpus"), 2.0);
        a.check();
    }

    #[test]
    fn roles_are_ordered_before_frameworks() {
        // Role a has two frameworks, role b one: b's framework gets half of the cluster.
        let agents =
            [("s0", "cpus:1;mem:64"), ("s1", "cpus:1;mem:64"), ("s2", "cpus:1;mem:64"), ("s3", "cpus:1;mem:64")];
        let mut a = setup(&[("fa1", &["a"]), ("fa2", &["a"]), ("fb", &["b"])], &agents);
        assert_eq!(got(&a.allocate(secs(0))), ["s0>fa1", "s1>fb", "s2>fa2", "s3>fb"]);
        a.check();
    }

    #[test]
    fn weights_are_honoured() {
        let mut a = setup(&[("fh", &["heavy"]), ("fl", &["light"])], &[]);
        a.set_weight("heavy", 2.0);
        for i in 0..60 {
            a.add_agent(&aid(&format!("s{i:02}")), &res("cpus:1;mem:1024"), &[]);
        }
        let allocs = a.allocate(secs(0));
        let heavy = allocs.iter().filter(|x| x.role == "heavy").count();
        assert_eq!(allocs.len(), 60);
        assert!((39..=41).contains(&heavy), "heavy got {heavy} of 60");
        assert_eq!(a.allocated(&fid("fh")).scalar("cpus"), heavy as f64);
    }

    #[test]
    fn resources_are_offered_once_and_carry_their_role() {
        let mut a = setup(&[("f1", &["r"])], &[("a1", "cpus:4;mem:4096;ports:[31000-32000]")]);
        let first = a.allocate(secs(0));
        assert_eq!(first[0].resources.scalar("cpus"), 4.0);
        assert!(first[0].resources.iter().all(|r| r.allocation_role() == Some("r")));
        assert!(a.allocate(secs(1)).is_empty());
        assert_eq!(a.available(&aid("a1")), Some(Resources::new()));
        // The unused part of an accept comes back and is offered again.
        let unused = res("cpus:1;mem:1024;ports:[31500-32000]").allocated_to(Some("r"));
        a.recover(&fid("f1"), &aid("a1"), &unused, None, secs(1));
        assert_eq!(a.allocate(secs(2))[0].resources, unused);
        a.check();
    }

    #[test]
    fn declined_resources_come_back_after_refuse_seconds() {
        let mut a = setup(&[("f1", &["r"])], &[("a1", "cpus:4;mem:4096")]);
        let offer = a.allocate(secs(0)).remove(0);
        a.recover(&fid("f1"), &aid("a1"), &offer.resources, Some(secs(5)), secs(0));
        assert!(a.allocate(secs(0)).is_empty());
        assert!(a.allocate(Duration::from_millis(4999)).is_empty());
        // Another framework may take them meanwhile.
        a.add_framework(&fid("f2"), &roles(&["r"]), &[], true);
        let other = a.allocate(secs(4));
        assert_eq!(got(&other), ["a1>f2"]);
        a.remove_framework(&fid("f2"));
        assert_eq!(got(&a.allocate(secs(5))), ["a1>f1"]);
        assert_eq!(a.filter_count(), 0, "expired filter dropped");
        a.check();
    }

    #[test]
    fn filter_covers_only_subsets() {
        let mut a = setup(&[("f1", &["r"])], &[("a1", "cpus:4;mem:4096")]);
        a.allocate(secs(0));
        let half = res("cpus:2;mem:2048").allocated_to(Some("r"));
        a.recover(&fid("f1"), &aid("a1"), &half, Some(secs(60)), secs(0));
        assert!(a.allocate(secs(1)).is_empty());
        // A task ends: more is free than was refused, so the framework is offered again.
        a.recover(&fid("f1"), &aid("a1"), &half, None, secs(2));
        assert_eq!(a.allocate(secs(3))[0].resources.scalar("cpus"), 4.0);
    }

    #[test]
    fn suppress_stops_offers_and_revive_clears_filters() {
        let mut a = setup(&[("f1", &["x", "y"])], &[("a1", "cpus:1;mem:512")]);
        a.suppress(&fid("f1"), &roles(&["x"]));
        let offer = a.allocate(secs(0));
        assert_eq!(offer[0].role, "y");
        a.recover(&fid("f1"), &aid("a1"), &offer[0].resources, Some(secs(3600)), secs(0));
        assert!(a.allocate(secs(1)).is_empty());
        a.suppress(&fid("f1"), &[]);
        a.revive(&fid("f1"), &roles(&["y"]));
        assert_eq!(a.allocate(secs(2))[0].role, "y", "filter for y dropped, x still suppressed");
        a.check();
        a.remove_framework(&fid("f1"));
        a.add_framework(&fid("f1"), &roles(&["x"]), &roles(&["x"]), true);
        assert!(a.allocate(secs(3)).is_empty());
        a.revive(&fid("f1"), &[]);
        assert_eq!(a.allocate(secs(4))[0].role, "x");
        a.check();
    }

    #[test]
    fn inactive_agents_and_frameworks_get_nothing() {
        let mut a = setup(&[], &[("a1", "cpus:1;mem:512")]);
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], false);
        assert!(a.allocate(secs(0)).is_empty());
        a.activate_framework(&fid("f1"));
        a.deactivate_agent(&aid("a1"));
        assert!(a.allocate(secs(0)).is_empty());
        a.activate_agent(&aid("a1"));
        assert_eq!(a.allocate(secs(0)).len(), 1);
        a.deactivate_framework(&fid("f1"));
        assert_eq!(a.allocated(&fid("f1")).scalar("cpus"), 1.0, "kept while inactive");
        a.check();
    }

    #[test]
    fn reserved_resources_go_only_to_their_role() {
        let mut a = setup(&[("batch", &["batch"])], &[("a1", "cpus:2;mem:1024;cpus(web):4;mem(web):2048")]);
        let offer = a.allocate(secs(0));
        assert!(offer[0].resources.iter().all(|r| !r.is_reserved()));
        assert_eq!(a.available(&aid("a1")).map(|r| r.scalar("cpus")), Some(4.0));
        a.add_framework(&fid("web"), &roles(&["web"]), &[], true);
        let offer = a.allocate(secs(0));
        assert_eq!(got(&offer), ["a1>web"]);
        assert!(offer[0].resources.iter().all(|r| r.reservation_role() == "web"));
        a.check();
    }

    fn quota(guarantees: &[(&str, f64)], limits: &[(&str, f64)]) -> Quota {
        let map = |v: &[(&str, f64)]| v.iter().map(|(k, x)| (k.to_string(), *x)).collect();
        Quota { guarantees: map(guarantees), limits: map(limits) }
    }

    fn offered(allocs: &[Allocation], fw: &str, name: &str) -> f64 {
        allocs.iter().filter(|a| a.framework_id == fid(fw)).map(|a| a.resources.scalar(name)).sum()
    }

    #[test]
    fn a_guarantee_is_kept_free_for_its_role_and_met_first() {
        let agents = [("a1", "cpus:4;mem:4096"), ("a2", "cpus:4;mem:4096"), ("a3", "cpus:4;mem:4096")];
        // Without quota, the only framework gets everything.
        let mut plain = setup(&[("greedy", &["batch"])], &agents);
        assert_eq!(offered(&plain.allocate(secs(0)), "greedy", "cpus"), 12.0);
        // With 8 cpus guaranteed to `prod`, which has no framework yet, 8 cpus stay free.
        let mut a = setup(&[("greedy", &["batch"])], &agents);
        a.set_quota("prod", &quota(&[("cpus", 8.0)], &[]));
        let first = a.allocate(secs(0));
        assert_eq!(offered(&first, "greedy", "cpus"), 4.0);
        a.check();
        // `prod` arrives: it gets its 8 at once, the greedy role nothing more.
        a.add_framework(&fid("web"), &roles(&["prod"]), &[], true);
        let second = a.allocate(secs(0));
        assert_eq!(offered(&second, "web", "cpus"), 8.0);
        assert_eq!(offered(&second, "greedy", "cpus"), 0.0);
        a.check();
        // Removing the quota frees nothing held, and changes nothing offered twice.
        a.set_quota("prod", &Quota::default());
        assert!(a.allocate(secs(0)).is_empty());
        a.check();
    }

    #[test]
    fn a_role_is_never_offered_beyond_its_limit() {
        let mut a = setup(&[("f1", &["dev"])], &[("a1", "cpus:4;mem:4096"), ("a2", "cpus:4;mem:4096")]);
        a.set_quota("dev", &quota(&[], &[("cpus", 5.0), ("mem", 6000.0)]));
        let offers = a.allocate(secs(0));
        assert_eq!(offered(&offers, "f1", "cpus"), 5.0);
        assert_eq!(offered(&offers, "f1", "mem"), 6000.0);
        a.check();
        // Declining gives it back; the next cycle stays within the limit again.
        for o in &offers {
            a.recover(&o.framework_id, &o.agent_id, &o.resources, None, secs(0));
        }
        assert_eq!(offered(&a.allocate(secs(1)), "f1", "cpus"), 5.0);
        a.check();
        // A raised limit lets it have the rest.
        a.set_quota("dev", &quota(&[], &[("cpus", 100.0)]));
        assert_eq!(offered(&a.allocate(secs(2)), "f1", "cpus"), 3.0);
        a.check();
    }

    #[test]
    fn below_min_allocatable_is_not_offered() {
        let mut a = setup(&[("f1", &["r"])], &[("tiny", "cpus:0.009;mem:31;ports:[1-10]")]);
        assert!(a.allocate(secs(0)).is_empty());
        a.add_agent(&aid("cpu-only"), &res("cpus:0.01"), &[]);
        a.add_agent(&aid("mem-only"), &res("mem:32"), &[]);
        assert_eq!(got(&a.allocate(secs(0))), ["cpu-only>f1", "mem-only>f1"]);
    }

    #[test]
    fn recovers_unmerged_wire_resources() {
        let mut a = setup(&[("f1", &["r"])], &[("a1", "cpus:4;mem:1024;ports:[31000-31010]")]);
        a.allocate(secs(0));
        let mut ports = agora_api::Resource::ranges("ports", vec![]).with_allocation(Some("r"));
        let range = |begin, end| agora_api::resources::Range { begin, end };
        ports.ranges = Some(agora_api::resources::Ranges { range: vec![range(31010, 31010), range(31000, 31001)] });
        let cpus = |v| agora_api::Resource::scalar("cpus", v).with_allocation(Some("r"));
        a.recover(&fid("f1"), &aid("a1"), &Resources(vec![cpus(1.0), cpus(0.5), ports]), None, secs(1));
        let available = a.available(&aid("a1")).unwrap_or_default();
        assert_eq!(available.scalar("cpus"), 1.5);
        assert_eq!(available.ranges_of("ports"), [(31000, 31001), (31010, 31010)]);
        a.check();
    }

    #[test]
    fn removals_return_or_drop_allocations() {
        let mut a = setup(&[("f1", &["r"])], &[("a1", "cpus:1;mem:512"), ("a2", "cpus:2;mem:512")]);
        assert_eq!(a.allocate(secs(0)).len(), 2);
        a.remove_agent(&aid("a2"));
        assert_eq!(a.allocated(&fid("f1")).scalar("cpus"), 1.0);
        a.remove_framework(&fid("f1"));
        assert_eq!(a.available(&aid("a1")), Some(res("cpus:1;mem:512")));
        assert_eq!((a.agent_count(), a.framework_count()), (1, 0));
        a.check();
    }

    #[test]
    fn used_resources_count_as_allocated() {
        let mut a = setup(&[], &[]);
        let used = res("cpus:1;mem:256").allocated_to(Some("r"));
        // The framework has not re-registered yet.
        a.add_agent(&aid("a1"), &res("cpus:4;mem:1024"), &[(fid("f1"), used.clone())]);
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_framework(&fid("f2"), &roles(&["r"]), &[], true);
        assert_eq!(a.allocated(&fid("f1")), used);
        assert_eq!(got(&a.allocate(secs(0))), ["a1>f2"], "f1 already holds a share");
        a.check();
    }

    #[test]
    fn unknown_ids_are_ignored() {
        let mut a = setup(&[], &[]);
        let (f, s) = (fid("nope"), aid("nope"));
        a.update_framework(&f, &roles(&["r"]), &[]);
        a.remove_framework(&f);
        a.activate_framework(&f);
        a.deactivate_framework(&f);
        a.suppress(&f, &[]);
        a.revive(&f, &[]);
        a.remove_agent(&s);
        a.activate_agent(&s);
        a.deactivate_agent(&s);
        a.recover(&f, &s, &res("cpus:1"), Some(secs(1)), secs(0));
        a.set_weight("r", f64::NAN);
        assert!(a.allocate_agents(std::slice::from_ref(&s), secs(0)).is_empty());
        assert!(a.allocated(&f).is_empty() && a.available(&s).is_none());
        a.check();
    }

    #[test]
    fn start_agent_rotates_between_cycles() {
        let mut a = setup(&[("f1", &["r"]), ("f2", &["r"])], &[("a1", "cpus:1;mem:64"), ("a2", "cpus:1;mem:64")]);
        let first = a.allocate(secs(0));
        assert_eq!(got(&first), ["a1>f1", "a2>f2"]);
        for x in &first {
            a.recover(&x.framework_id, &x.agent_id, &x.resources, None, secs(0));
        }
        assert_eq!(got(&a.allocate(secs(1))), ["a2>f1", "a1>f2"]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        AddAgent {
            agent: u8,
            cpus: u8,
            mem: u16,
            port: u16,
            reserved: bool,
            used_by: Option<u8>,
        },
        RemoveAgent(u8),
        ToggleAgent(u8),
        AddFramework {
            fw: u8,
            roles: u8,
            suppressed: u8,
        },
        RemoveFramework(u8),
        ToggleFramework(u8),
        Suppress(u8, u8),
        Revive(u8, u8),
        Weight(u8, u8),
        Allocate(u8),
        AllocateAgents(Vec<u8>),
        Recover {
            fw: u8,
            agent: u8,
            part: u8,
            refuse: Option<u8>,
        },
        /// A cpus guarantee and maybe a limit (0 = none) for role a, b or c.
        Quota {
            role: u8,
            guarantee: u8,
            limit: u8,
        },
    }

    /// The roles of a bit mask over a, b, c.
    fn mask(m: u8) -> Vec<String> {
        ["a", "b", "c"].iter().enumerate().filter(|(i, _)| m & (1 << i) != 0).map(|(_, r)| r.to_string()).collect()
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let add_agent = (0u8..6, 0u8..8, 0u16..4096, 0u16..100, any::<bool>(), proptest::option::of(0u8..4));
        let recover = (0u8..4, 0u8..6, 0u8..4, proptest::option::of(0u8..5));
        prop_oneof![
            1 => add_agent.prop_map(|(agent, cpus, mem, port, reserved, used_by)| Op::AddAgent {
                agent, cpus, mem, port, reserved, used_by
            }),
            1 => (0u8..6).prop_map(Op::RemoveAgent),
            1 => (0u8..6).prop_map(Op::ToggleAgent),
            1 => (0u8..4, 0u8..8, 0u8..8).prop_map(|(fw, roles, suppressed)| Op::AddFramework { fw, roles, suppressed }),
            1 => (0u8..4).prop_map(Op::RemoveFramework),
            1 => (0u8..4).prop_map(Op::ToggleFramework),
            1 => (0u8..4, 0u8..8).prop_map(|(f, m)| Op::Suppress(f, m)),
            1 => (0u8..4, 0u8..8).prop_map(|(f, m)| Op::Revive(f, m)),
            1 => (0u8..3, 1u8..4).prop_map(|(r, w)| Op::Weight(r, w)),
            3 => (0u8..4).prop_map(Op::Allocate),
            1 => proptest::collection::vec(0u8..7, 0..4).prop_map(Op::AllocateAgents),
            3 => recover.prop_map(|(fw, agent, part, refuse)| Op::Recover { fw, agent, part, refuse }),
            1 => (0u8..3, 0u8..10, 0u8..10).prop_map(|(role, guarantee, limit)| Op::Quota { role, guarantee, limit }),
        ]
    }

    /// Some of `held`: all of it, half of each scalar and range, or things it does not hold.
    fn portion(held: &Resources, part: u8) -> Resources {
        let halve = |r: &agora_api::Resource| {
            let mut r = r.clone();
            if let Some(s) = r.scalar.as_mut() {
                s.value = agora_api::resources::round3(s.value / 2.0);
            }
            for x in r.ranges.iter_mut().flat_map(|rs| &mut rs.range) {
                x.end = x.begin + (x.end - x.begin) / 2;
            }
            r
        };
        match part {
            0 => held.clone(),
            1 | 2 => Resources::from_vec(held.iter().map(halve).collect()),
            _ => res("cpus:3;mem:100;ports:[31000-31010]").allocated_to(Some("a")),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn nothing_is_offered_twice(ops in proptest::collection::vec(arb_op(), 1..60)) {
            let mut a = setup(&[], &[]);
            let mut now = Duration::ZERO;
            let (f, s) = (|i: u8| fid(&format!("f{i}")), |i: u8| aid(&format!("s{i}")));
            for op in ops {
                let before: BTreeMap<AgentId, Resources> =
                    a.agent_slots.keys().map(|k| (k.clone(), a.available(k).unwrap_or_default())).collect();
                let mut made = Vec::new();
                match op {
                    Op::AddAgent { agent, cpus, mem, port, reserved, used_by } => {
                        let base = 31000 + u64::from(port) * 10;
                        let mut text = format!("cpus:{cpus};mem:{mem};ports:[{base}-{}]", base + 20);
                        if reserved {
                            text.push_str(";cpus(b):2;mem(b):512");
                        }
                        let used = res("cpus:1;mem:64;ports:[31000-31100]").allocated_to(Some("a"));
                        let used: Vec<_> = used_by.map(|i| (f(i), used)).into_iter().collect();
                        a.add_agent(&s(agent), &res(&text), &used);
                    }
                    Op::RemoveAgent(i) => a.remove_agent(&s(i)),
                    Op::ToggleAgent(i) => match a.agent(&s(i)).map(|x| x.active) {
                        Some(true) => a.deactivate_agent(&s(i)),
                        _ => a.activate_agent(&s(i)),
                    },
                    Op::AddFramework { fw, roles, suppressed } => {
                        a.add_framework(&f(fw), &mask(roles), &mask(suppressed), true);
                    }
                    Op::RemoveFramework(i) => a.remove_framework(&f(i)),
                    Op::ToggleFramework(i) => match a.framework(&f(i)).map(|x| x.active) {
                        Some(true) => a.deactivate_framework(&f(i)),
                        _ => a.activate_framework(&f(i)),
                    },
                    Op::Suppress(i, m) => a.suppress(&f(i), &mask(m)),
                    Op::Revive(i, m) => a.revive(&f(i), &mask(m)),
                    Op::Weight(r, w) => a.set_weight(&mask(1 << r)[0], f64::from(w)),
                    Op::Allocate(dt) => {
                        now += secs(u64::from(dt));
                        made = a.allocate(now);
                        // Quotas hold resources back on purpose (headroom, limits).
                        if a.quota_roles.is_empty() {
                            let left = a.left_unoffered(now);
                            prop_assert!(left.is_empty(), "not offered after a full cycle: {left:?}");
                        }
                    }
                    Op::Quota { role, guarantee, limit } => {
                        let mut q = Quota::default();
                        if guarantee > 0 {
                            q.guarantees.insert("cpus".into(), f64::from(guarantee.min(limit.max(guarantee))));
                        }
                        if limit > 0 {
                            q.limits.insert("cpus".into(), f64::from(limit.max(guarantee)));
                        }
                        a.set_quota(&mask(1 << role)[0], &q);
                    }
                    Op::AllocateAgents(v) => {
                        made = a.allocate_agents(&v.into_iter().map(s).collect::<Vec<_>>(), now);
                    }
                    Op::Recover { fw, agent, part, refuse } => {
                        let held = portion(&a.allocation_on(&f(fw), &s(agent)), part);
                        a.recover(&f(fw), &s(agent), &held, refuse.map(|x| secs(u64::from(x))), now);
                    }
                }
                a.check();
                // No offer takes a role beyond its limit.
                for x in &made {
                    let r = a.cat.find_role(&x.role).expect("a known role");
                    let rs = &a.role_states[r as usize];
                    let offered: i64 = made.iter().filter(|y| y.role == x.role).map(|y| (y.resources.scalar("cpus") * 1000.0).round() as i64).sum();
                    prop_assert!(
                        rs.limit[0] == NO_LIMIT || rs.alloc[0] <= rs.limit[0] || offered == 0,
                        "role {} over its cpus limit: {} > {}", x.role, rs.alloc[0], rs.limit[0]
                    );
                }
                // Every new allocation came out of what was available, none of it twice.
                let mut given: BTreeMap<AgentId, Resources> = BTreeMap::new();
                for x in &made {
                    let fw = a.framework(&x.framework_id).expect("an added framework");
                    prop_assert!(fw.offerable_roles().any(|r| *r == x.role) && a.agent(&x.agent_id).is_some_and(|s| s.active));
                    prop_assert!(x.resources.iter().all(|r| r.allocation_role() == Some(x.role.as_str())));
                    prop_assert!(x.resources.iter().all(|r| !r.is_reserved() || r.reservation_role() == x.role));
                    prop_assert!(api_allocatable(&a.config, &x.resources));
                    given.entry(x.agent_id.clone()).or_default().add_all(&x.resources.allocated_to(None));
                }
                for (agent, sum) in &given {
                    prop_assert!(before[agent].contains(sum), "{agent}: gave {sum} out of {}", before[agent]);
                }
            }
        }
    }
}
