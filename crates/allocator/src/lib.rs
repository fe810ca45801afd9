//! Hierarchical DRF allocator, in the manner of Mesos's `HierarchicalDRFAllocator`.
//!
//! Two levels of dominant resource fairness: roles are ordered by their weighted dominant
//! share, then the frameworks of a role by their dominant share within that role. A cycle
//! walks the active agents (the starting agent rotates between cycles) and, role by role,
//! hands all of an agent's resources usable by the role (unreserved, or reserved to it) to
//! the first framework of that role that is active, has not suppressed the role and has no
//! live refuse filter covering them.
//!
//! Cost: a cycle does work per agent and per offer made, not per agent × framework, except
//! where frameworks' refuse filters must be looked at. Once every framework of a role is
//! found filtered on an agent, the agent remembers it (until the agent gains resources, a
//! framework joins the role or the earliest of those filters expires), so a cluster whose
//! offers were all declined costs a pass over the agents per cycle. Filters are keyed by
//! dense framework handles, and frameworks that declined the same resources on an agent
//! share one copy of them. docs/benchmarks.md has the figures.
//!
//! **Architecture Invariant:** the allocator performs no I/O, reads no clock (the caller
//! passes `now`) and is deterministic. For every agent, the sum of its allocations plus its
//! available resources equals its total: nothing is handed out twice.
#![forbid(unsafe_code)]

use agora_api::{AgentId, FrameworkId, Resource, Resources};
use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
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

/// Amounts of cpus, mem, disk and gpus (the kinds shares are computed over) in thousandths,
/// Mesos's fixed point, so that sums stay exact.
type Qty = [i64; 4];

fn qty(r: &Resources) -> Qty {
    ["cpus", "mem", "disk", "gpus"].map(|name| (r.scalar(name) * 1000.0).round() as i64)
}

fn add_qty(into: &mut Qty, q: &Qty, sign: i64) {
    for (a, b) in into.iter_mut().zip(q) {
        *a = (*a + sign * b).max(0);
    }
}

/// A dominant share as a sortable key: non-negative floats order like their bit patterns.
type Share = u64;

fn share(alloc: Option<&Qty>, total: &Qty, weight: f64) -> Share {
    let dominant = alloc.into_iter().flat_map(|a| a.iter().zip(total)).filter(|(_, t)| **t > 0);
    (dominant.map(|(a, t)| *a as f64 / *t as f64).fold(0.0, f64::max) / weight).to_bits()
}

/// An agent's slot in [`Allocator::agents`]; slots of removed agents are reused.
type AgentIdx = u32;

/// A framework's handle, never reused: small keys for the refuse filters of every agent.
type FwIdx = u32;

/// Hashes the small integer handles above (and pointers) by one multiplication, instead of
/// SipHash.
#[derive(Default)]
struct HandleHasher(u64);

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

/// Members kept in (share, key) order; updating one costs O(log n).
#[derive(Debug)]
struct Sorter<K> {
    order: BTreeSet<(Share, K)>,
    share: HashMap<K, Share>,
}

impl<K> Default for Sorter<K> {
    fn default() -> Self {
        Sorter { order: BTreeSet::new(), share: HashMap::new() }
    }
}

impl<K: Ord + Hash + Clone> Sorter<K> {
    fn set<Q>(&mut self, key: &Q, share: Share)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.share.get_mut(key) {
            Some(old) if *old == share => return,
            Some(old) => {
                self.order.remove(&(*old, key.to_owned()));
                *old = share;
            }
            None => {
                self.share.insert(key.to_owned(), share);
            }
        }
        self.order.insert((share, key.to_owned()));
    }

    fn remove(&mut self, key: &K) {
        if let Some(old) = self.share.remove(key) {
            self.order.remove(&(old, key.clone()));
        }
    }
}

/// A framework as the sorters hold it: ordered by id, with its handle at hand.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FwKey {
    id: FrameworkId,
    idx: FwIdx,
}

/// The offerable frameworks of one role.
#[derive(Debug, Default)]
struct RoleFrameworks {
    sorter: Sorter<FwKey>,
    /// The same frameworks by handle.
    handles: HandleSet,
    /// Stamp of the last time a framework joined: a framework can be offered resources that
    /// every earlier member had refused.
    joined: u64,
}

/// Resources a framework refused for a role on an agent. Frameworks that refused the same
/// on the same agent share one copy.
#[derive(Debug, PartialEq)]
struct Refused {
    role: String,
    /// With allocation role `role`.
    resources: Resources,
}

#[derive(Debug)]
struct Filter {
    framework: FwIdx,
    refused: Arc<Refused>,
    until: Duration,
}

/// Every offerable framework of a role had a live filter covering what the agent has for
/// the role: no need to look at the filters again while this holds.
#[derive(Debug)]
struct AllFiltered {
    /// `RoleFrameworks::joined` when found.
    joined: u64,
    /// The earliest expiry of the filters relied on.
    until: Duration,
}

#[derive(Debug)]
struct Agent {
    id: AgentId,
    /// Without allocation roles, like `available`.
    total: Resources,
    available: Resources,
    /// Per framework, with allocation roles.
    allocations: BTreeMap<FrameworkId, Resources>,
    active: bool,
    /// Refuse filters, ordered by framework handle: one block of memory to scan.
    filters: Vec<Filter>,
    /// No filter expires before this.
    filters_expire: Duration,
    /// The last refused resources recorded, to share with the next framework refusing them.
    last_refused: Option<Arc<Refused>>,
    /// Per role. Cleared whenever `available` grows.
    all_filtered: HashMap<String, AllFiltered>,
}

impl Agent {
    /// Where the framework's filters are in `filters`.
    fn filters_of(&self, fw: FwIdx) -> std::ops::Range<usize> {
        let start = self.filters.partition_point(|f| f.framework < fw);
        start..start + self.filters[start..].partition_point(|f| f.framework == fw)
    }

    /// Drops the filters expired at `now`, if any.
    fn expire_filters(&mut self, now: Duration) {
        if now >= self.filters_expire {
            self.filters.retain(|f| f.until > now);
            self.filters_expire = self.filters.iter().map(|f| f.until).min().unwrap_or(Duration::MAX);
        }
    }

    /// Resources (with allocation roles) came back: filters may no longer cover what the
    /// agent has.
    fn gain(&mut self, resources: Resources) {
        if resources.is_empty() {
            return;
        }
        self.all_filtered.clear();
        let resources = match single_role(&resources) {
            // Clearing one allocation role from merged resources keeps them distinct.
            Some(_) => Resources(resources.into_vec().into_iter().map(|r| r.with_allocation(None)).collect()),
            None => resources.allocated_to(None),
        };
        if self.available.is_empty() {
            self.available = resources;
        } else {
            self.available.add_all(&resources);
        }
    }
}

#[derive(Debug)]
struct Framework {
    key: FwKey,
    roles: BTreeSet<String>,
    suppressed: BTreeSet<String>,
    active: bool,
    /// Agents that hold (or held: expired filters are dropped lazily) refuse filters of
    /// this framework; a superset, so that its filters can be dropped without a pass over
    /// all agents.
    filtered_on: HandleSet,
}

impl Framework {
    /// The roles the framework can be offered resources for.
    fn offerable_roles(&self) -> impl Iterator<Item = &String> {
        self.roles.iter().filter(|r| self.active && !self.suppressed.contains(*r))
    }
}

/// What a framework holds. Also kept for frameworks not (yet) added whose tasks an agent
/// reported running.
#[derive(Debug, Default)]
struct Usage {
    agents: BTreeSet<AgentIdx>,
    by_role: HashMap<String, Qty>,
}

/// The hierarchical DRF allocator. See the crate documentation.
#[derive(Debug)]
pub struct Allocator {
    config: Config,
    /// Agents by slot; `None` for free slots.
    agents: Vec<Option<Agent>>,
    free_slots: Vec<AgentIdx>,
    /// Agent slots in id order: the order of a cycle.
    agent_slots: BTreeMap<AgentId, AgentIdx>,
    frameworks: HashMap<FrameworkId, Framework>,
    next_framework: FwIdx,
    usage: HashMap<FrameworkId, Usage>,
    /// Allocated per role, over all frameworks (added or not).
    role_alloc: HashMap<String, Qty>,
    weights: HashMap<String, f64>,
    /// Roles with at least one offerable framework, by weighted dominant share.
    roles: Sorter<String>,
    /// Per role, its offerable frameworks by dominant share within the role.
    role_frameworks: HashMap<String, RoleFrameworks>,
    /// Source of `RoleFrameworks::joined` stamps.
    stamps: u64,
    /// Sum of all agents' totals.
    total: Qty,
    /// The total changed since the shares were computed.
    shares_stale: bool,
    /// The agent the last full cycle started at.
    last_start: Option<AgentId>,
}

fn allocatable(config: &Config, r: &Resources) -> bool {
    r.scalar("cpus") >= config.min_allocatable_cpus || r.scalar("mem") >= config.min_allocatable_mem
}

fn usable_by(r: &Resource, role: &str) -> bool {
    !r.is_reserved() || r.reservation_role() == role
}

/// The allocation role (`"*"` when unset) when all resources share one.
fn single_role(r: &Resources) -> Option<&str> {
    let role = r.iter().next()?.allocation_role().unwrap_or("*");
    r.iter().all(|x| x.allocation_role().unwrap_or("*") == role).then_some(role)
}

/// Groups resources by allocation role (`"*"` when unset).
fn split_roles(r: &Resources) -> BTreeMap<String, Resources> {
    let mut out: BTreeMap<String, Resources> = BTreeMap::new();
    for x in r.iter() {
        out.entry(x.allocation_role().unwrap_or("*").to_string()).or_default().add(x);
    }
    out
}

/// `usable` (merged, without allocation roles) allocated to `role`, as in `allocate_agent`.
fn offer_of(usable: &Resources, role: &str) -> Resources {
    Resources(usable.iter().map(|r| r.clone().with_allocation(Some(role))).collect())
}

/// Whether refuse filters cover an offer, worked out once per shared [`Refused`].
struct Covers<'a> {
    role: &'a str,
    offered: &'a Resources,
    known: HashMap<usize, bool, BuildHasherDefault<HandleHasher>>,
}

impl Covers<'_> {
    fn check(&mut self, f: &Filter) -> bool {
        let (role, offered) = (self.role, self.offered);
        let key = Arc::as_ptr(&f.refused) as usize;
        *self.known.entry(key).or_insert_with(|| f.refused.role == role && f.refused.resources.contains(offered))
    }
}

/// The first framework of `members`, in DRF order, with no live filter covering `offered`
/// on this agent or, when every one has, the earliest expiry of the filters that refused.
/// Drops the expired filters.
fn pick_framework(
    members: &RoleFrameworks,
    agent: &mut Agent,
    role: &str,
    offered: &Resources,
    now: Duration,
) -> Result<FwKey, Duration> {
    agent.expire_filters(now);
    let mut covers = Covers { role, offered, known: HashMap::default() };
    // Unless most of the agent's filters are other roles' (then members are looked up one
    // by one), one pass over them, one block of memory, tells whether every member refused:
    // the common case once offers get declined.
    if agent.filters.len() <= 4 * members.handles.len() {
        let (mut refusing, mut earliest) = (0, Duration::MAX);
        for block in agent.filters.chunk_by(|a, b| a.framework == b.framework) {
            if !members.handles.contains(&block[0].framework) {
                continue;
            }
            if let Some(until) = block.iter().filter(|f| covers.check(f)).map(|f| f.until).max() {
                refusing += 1;
                earliest = earliest.min(until);
            }
        }
        if refusing == members.handles.len() {
            return Err(earliest);
        }
    }
    let mut earliest = Duration::MAX;
    for (_, fw) in &members.sorter.order {
        let range = agent.filters_of(fw.idx);
        match agent.filters[range].iter().filter(|f| covers.check(f)).map(|f| f.until).max() {
            None => return Ok(fw.clone()),
            Some(until) => earliest = earliest.min(until),
        }
    }
    Err(earliest)
}

impl Allocator {
    pub fn new(config: Config) -> Self {
        Allocator {
            config,
            agents: Vec::new(),
            free_slots: Vec::new(),
            agent_slots: BTreeMap::new(),
            frameworks: HashMap::new(),
            next_framework: 0,
            usage: HashMap::new(),
            role_alloc: HashMap::new(),
            weights: HashMap::new(),
            roles: Sorter::default(),
            role_frameworks: HashMap::new(),
            stamps: 0,
            total: [0; 4],
            shares_stale: false,
            last_start: None,
        }
    }

    /// Adds a framework, or resets the settings of a known one.
    pub fn add_framework(&mut self, id: &FrameworkId, roles: &[String], suppressed_roles: &[String], active: bool) {
        self.unlist(id);
        let (key, filtered_on) = match self.frameworks.remove(id) {
            Some(known) => (known.key, known.filtered_on),
            None => {
                let idx = self.next_framework;
                self.next_framework = idx.checked_add(1).expect("fewer than 2^32 framework registrations");
                (FwKey { id: id.clone(), idx }, HandleSet::default())
            }
        };
        let roles = roles.iter().cloned().collect();
        let suppressed = suppressed_roles.iter().cloned().collect();
        self.frameworks.insert(id.clone(), Framework { key, roles, suppressed, active, filtered_on });
        self.list(id);
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
        self.unlist(id);
        self.clear_filters(id, None);
        self.frameworks.remove(id);
        let Some(usage) = self.usage.remove(id) else { return };
        for slot in &usage.agents {
            let Some(agent) = self.agents.get_mut(*slot as usize).and_then(Option::as_mut) else { continue };
            if let Some(alloc) = agent.allocations.remove(id) {
                self.untrack(id, &alloc);
                if let Some(agent) = self.agents.get_mut(*slot as usize).and_then(Option::as_mut) {
                    agent.gain(alloc);
                }
            }
        }
    }

    pub fn activate_framework(&mut self, id: &FrameworkId) {
        self.change(id, |fw| fw.active = true);
    }

    /// No offers while inactive; what it holds stays. As in Mesos, its filters are dropped.
    pub fn deactivate_framework(&mut self, id: &FrameworkId) {
        self.change(id, |fw| fw.active = false);
        self.clear_filters(id, None);
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
        let roles: BTreeSet<String> = roles.iter().cloned().collect();
        let only = (!roles.is_empty()).then_some(&roles);
        self.change(id, |fw| fw.suppressed.retain(|r| only.is_some_and(|o| !o.contains(r))));
        self.clear_filters(id, only);
    }

    /// Adds an agent, replacing one with the same id. `used`: resources in use per framework,
    /// each carrying its allocation role (else the framework's first role); they stay
    /// allocated until recovered.
    pub fn add_agent(&mut self, id: &AgentId, total: &Resources, used: &[(FrameworkId, Resources)]) {
        self.remove_agent(id);
        let total = total.allocated_to(None);
        let mut available = total.clone();
        let mut grants = Vec::new();
        for (fw, res) in used {
            for (role, res) in split_roles(&self.with_default_role(fw, res)) {
                // Only what the agent has can be in use.
                let mut taken = available.clone();
                available.subtract_all(&res.allocated_to(None));
                taken.subtract_all(&available);
                grants.push((fw, role, taken));
            }
        }
        add_qty(&mut self.total, &qty(&total), 1);
        self.shares_stale = true;
        let agent = Agent {
            id: id.clone(),
            total,
            available,
            allocations: BTreeMap::new(),
            active: true,
            filters: Vec::new(),
            filters_expire: Duration::MAX,
            last_refused: None,
            all_filtered: HashMap::new(),
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
        for (fw, role, taken) in grants.into_iter().filter(|g| !g.2.is_empty()) {
            self.grant(slot, fw, &role, &taken.allocated_to(Some(&role)));
        }
    }

    /// Forgets an agent and everything allocated on it. Frameworks' `filtered_on` may still
    /// name its slot; clearing a framework's filters skips slots without them.
    pub fn remove_agent(&mut self, id: &AgentId) {
        let Some(slot) = self.agent_slots.remove(id) else { return };
        let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::take) else { return };
        self.free_slots.push(slot);
        for (fw, alloc) in &agent.allocations {
            self.untrack(fw, alloc);
            self.forget_usage(fw, slot);
        }
        add_qty(&mut self.total, &qty(&agent.total), -1);
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
        let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        // A declined or rescinded offer comes back whole, as the allocator made it: no need
        // to merge it or work out what was held.
        let whole = agent.allocations.get(framework_id).is_some_and(|held| held == resources);
        let resources = match whole {
            true => Cow::Borrowed(resources),
            false => Cow::Owned(self.with_default_role(framework_id, resources)),
        };
        let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { return };
        if whole {
            let held = agent.allocations.remove(framework_id).unwrap_or_default();
            self.untrack(framework_id, &held);
            if let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) {
                agent.gain(held);
            }
            self.forget_usage(framework_id, slot);
        } else if let Some(alloc) = agent.allocations.get_mut(framework_id) {
            let mut released = alloc.clone();
            alloc.subtract_all(&resources);
            released.subtract_all(alloc);
            if alloc.is_empty() {
                agent.allocations.remove(framework_id);
            }
            let emptied = !agent.allocations.contains_key(framework_id);
            self.untrack(framework_id, &released);
            if let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) {
                agent.gain(released);
            }
            if emptied {
                self.forget_usage(framework_id, slot);
            }
        }
        let Some(d) = refuse.filter(|d| !d.is_zero()) else { return };
        let (Some(fw), Some(agent)) =
            (self.frameworks.get_mut(framework_id), self.agents.get_mut(slot as usize).and_then(Option::as_mut))
        else {
            return;
        };
        let until = now.saturating_add(d);
        agent.expire_filters(now);
        agent.filters_expire = agent.filters_expire.min(until);
        let at = agent.filters_of(fw.key.idx).end;
        let mut added = Vec::new();
        for (role, resources) in split_roles(&resources) {
            let refused = Refused { role, resources };
            let refused = match &agent.last_refused {
                Some(last) if **last == refused => Arc::clone(last),
                _ => Arc::clone(agent.last_refused.insert(Arc::new(refused))),
            };
            added.push(Filter { framework: fw.key.idx, refused, until });
        }
        if !added.is_empty() {
            agent.filters.splice(at..at, added);
            fw.filtered_on.insert(slot);
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
            self.weights.insert(role.to_string(), weight);
            self.reshare(None, role);
        }
    }

    /// Everything allocated to the framework (offered or in use) over all agents.
    pub fn allocated(&self, framework_id: &FrameworkId) -> Resources {
        let mut out = Resources::new();
        for slot in self.usage.get(framework_id).into_iter().flat_map(|u| &u.agents) {
            let agent = self.agents.get(*slot as usize).and_then(Option::as_ref);
            if let Some(alloc) = agent.and_then(|a| a.allocations.get(framework_id)) {
                out.add_all(alloc);
            }
        }
        out
    }

    /// What the framework holds on one agent (empty if nothing or unknown).
    pub fn allocation_on(&self, framework_id: &FrameworkId, agent_id: &AgentId) -> Resources {
        self.agent(agent_id).and_then(|a| a.allocations.get(framework_id)).cloned().unwrap_or_default()
    }

    /// The unallocated resources of an agent.
    pub fn available(&self, agent_id: &AgentId) -> Option<Resources> {
        self.agent(agent_id).map(|a| a.available.clone())
    }

    pub fn agent_count(&self) -> usize {
        self.agent_slots.len()
    }

    pub fn framework_count(&self) -> usize {
        self.frameworks.len()
    }

    fn agent(&self, id: &AgentId) -> Option<&Agent> {
        let slot = *self.agent_slots.get(id)?;
        self.agents.get(slot as usize)?.as_ref()
    }

    fn agent_mut(&mut self, id: &AgentId) -> Option<&mut Agent> {
        let slot = *self.agent_slots.get(id)?;
        self.agents.get_mut(slot as usize)?.as_mut()
    }

    /// Offers what the agent has left, role by role in DRF order.
    fn allocate_agent(&mut self, slot: AgentIdx, now: Duration, out: &mut Vec<Allocation>) {
        let mut cursor: Option<(Share, String)> = None;
        loop {
            let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) else { return };
            if !agent.active || !allocatable(&self.config, &agent.available) {
                return;
            }
            // A role that gets resources moves back, with nothing left to use here, so
            // meeting it again is harmless.
            let next = match &cursor {
                None => self.roles.order.first(),
                Some(c) => self.roles.order.range((Excluded(c), Unbounded)).next(),
            };
            let Some(entry) = next else { return };
            let role = &cursor.insert(entry.clone()).1;
            let Some(members) = self.role_frameworks.get(role) else { continue };
            if agent.all_filtered.get(role).is_some_and(|f| f.joined == members.joined && now < f.until) {
                continue;
            }
            let all_usable = agent.available.iter().all(|r| usable_by(r, role));
            let usable =
                if all_usable { Cow::Borrowed(&agent.available) } else { Cow::Owned(agent.available.usable_by(role)) };
            if !allocatable(&self.config, &usable) {
                continue;
            }
            let fw = if agent.filters.is_empty() {
                members.sorter.order.first().map(|(_, fw)| fw.clone())
            } else {
                let offered = offer_of(&usable, role);
                match pick_framework(members, agent, role, &offered, now) {
                    Ok(fw) => Some(fw),
                    Err(until) => {
                        agent.all_filtered.insert(role.clone(), AllFiltered { joined: members.joined, until });
                        None
                    }
                }
            };
            let Some(fw) = fw else { continue };
            // What the role can use is exactly the entries that go: move them.
            let taken = if all_usable {
                std::mem::take(&mut agent.available.0)
            } else {
                let (taken, kept) =
                    std::mem::take(&mut agent.available.0).into_iter().partition(|r| usable_by(r, role));
                agent.available.0 = kept;
                taken
            };
            // Giving every entry of the (merged) resources the same allocation role keeps
            // them distinct: no merging needed.
            let offered = Resources(taken.into_iter().map(|r| r.with_allocation(Some(role))).collect());
            let (agent_id, role) = (agent.id.clone(), role.clone());
            self.grant(slot, &fw.id, &role, &offered);
            out.push(Allocation { framework_id: fw.id, agent_id, role, resources: offered });
        }
    }

    /// Records `res` (allocation role `role`), already taken from the agent's available.
    fn grant(&mut self, slot: AgentIdx, fw: &FrameworkId, role: &str, res: &Resources) {
        if let Some(agent) = self.agents.get_mut(slot as usize).and_then(Option::as_mut) {
            match agent.allocations.get_mut(fw) {
                Some(alloc) => alloc.add_all(res),
                None => {
                    agent.allocations.insert(fw.clone(), res.clone());
                }
            }
        }
        match self.usage.get_mut(fw) {
            Some(usage) => usage.agents.insert(slot),
            None => self.usage.entry(fw.clone()).or_default().agents.insert(slot),
        };
        self.track(fw, role, &qty(res), 1);
    }

    /// Takes allocated resources (of any roles) off the share accounting.
    fn untrack(&mut self, fw: &FrameworkId, res: &Resources) {
        if let Some(role) = single_role(res) {
            return self.track(fw, role, &qty(res), -1);
        }
        for (role, part) in split_roles(res) {
            self.track(fw, &role, &qty(&part), -1);
        }
    }

    fn track(&mut self, fw: &FrameworkId, role: &str, q: &Qty, sign: i64) {
        fn add(map: &mut HashMap<String, Qty>, role: &str, q: &Qty, sign: i64) {
            match map.get_mut(role) {
                Some(x) => add_qty(x, q, sign),
                None => add_qty(map.entry(role.to_string()).or_default(), q, sign),
            }
        }
        add(&mut self.role_alloc, role, q, sign);
        if let Some(usage) = self.usage.get_mut(fw) {
            add(&mut usage.by_role, role, q, sign);
        }
        self.reshare(Some(fw), role);
    }

    /// The framework no longer holds anything on the agent.
    fn forget_usage(&mut self, fw: &FrameworkId, slot: AgentIdx) {
        if let Some(usage) = self.usage.get_mut(fw) {
            usage.agents.remove(&slot);
            if usage.agents.is_empty() {
                self.usage.remove(fw);
            }
        }
    }

    /// Re-sorts a role, and a framework within it, after their allocation changed.
    fn reshare(&mut self, fw: Option<&FrameworkId>, role: &str) {
        if self.roles.share.contains_key(role) {
            let weight = self.weights.get(role).copied().unwrap_or(1.0);
            self.roles.set(role, share(self.role_alloc.get(role), &self.total, weight));
        }
        let Some(key) = fw.and_then(|fw| self.frameworks.get(fw)).map(|f| &f.key) else { return };
        let Some(members) = self.role_frameworks.get_mut(role) else { return };
        if members.sorter.share.contains_key(key) {
            let alloc = self.usage.get(&key.id).and_then(|u| u.by_role.get(role));
            members.sorter.set(key, share(alloc, &self.total, 1.0));
        }
    }

    /// Recomputes every share after the cluster total changed: O(roles + frameworks).
    fn refresh_shares(&mut self) {
        if !std::mem::take(&mut self.shares_stale) {
            return;
        }
        let listed: Vec<(String, FrameworkId)> = self
            .role_frameworks
            .iter()
            .flat_map(|(role, m)| m.sorter.share.keys().map(move |fw| (role.clone(), fw.id.clone())))
            .collect();
        for (role, fw) in &listed {
            self.reshare(Some(fw), role);
        }
    }

    /// Applies a change to a known framework, keeping the sorters in step.
    fn change(&mut self, id: &FrameworkId, f: impl FnOnce(&mut Framework)) {
        if self.frameworks.contains_key(id) {
            self.unlist(id);
            if let Some(fw) = self.frameworks.get_mut(id) {
                f(fw);
            }
            self.list(id);
        }
    }

    /// Takes a framework out of the sorters.
    fn unlist(&mut self, id: &FrameworkId) {
        let Some(fw) = self.frameworks.get(id) else { return };
        for role in &fw.roles {
            if let Some(members) = self.role_frameworks.get_mut(role) {
                members.sorter.remove(&fw.key);
                members.handles.remove(&fw.key.idx);
                if members.sorter.share.is_empty() {
                    self.role_frameworks.remove(role);
                    self.roles.remove(role);
                }
            }
        }
    }

    /// Puts a framework in the sorters of the roles it can be offered resources for.
    fn list(&mut self, id: &FrameworkId) {
        let Some(fw) = self.frameworks.get(id) else { return };
        let key = fw.key.clone();
        let roles: Vec<String> = fw.offerable_roles().cloned().collect();
        for role in roles {
            // Placeholder shares, corrected at once by reshare.
            if !self.roles.share.contains_key(&role) {
                self.roles.set(&role, 0);
            }
            self.stamps += 1;
            let members = self.role_frameworks.entry(role.clone()).or_default();
            members.joined = self.stamps;
            members.sorter.set(&key, 0);
            members.handles.insert(key.idx);
            self.reshare(Some(id), &role);
        }
    }

    /// Drops a framework's refuse filters for `roles` (all when `None`).
    fn clear_filters(&mut self, id: &FrameworkId, roles: Option<&BTreeSet<String>>) {
        let Some(fw) = self.frameworks.get_mut(id) else { return };
        let idx = fw.key.idx;
        let agents = &mut self.agents;
        fw.filtered_on.retain(|slot| {
            let Some(agent) = agents.get_mut(*slot as usize).and_then(Option::as_mut) else { return false };
            let range = agent.filters_of(idx);
            let kept: Vec<Filter> = agent
                .filters
                .drain(range.clone())
                .filter(|f| roles.is_some_and(|r| !r.contains(&f.refused.role)))
                .collect();
            let any = !kept.is_empty();
            agent.filters.splice(range.start..range.start, kept);
            any
        });
    }

    /// Gives resources without an allocation role the framework's first role, and merges
    /// them (resources straight off the wire may repeat entries or hold unsorted ranges).
    fn with_default_role(&self, id: &FrameworkId, res: &Resources) -> Resources {
        let role = self.frameworks.get(id).and_then(|f| f.roles.first()).map_or("*", String::as_str);
        let fill = |r: &Resource| r.clone().with_allocation(Some(r.allocation_role().unwrap_or(role)));
        Resources::from_vec(res.iter().map(fill).collect())
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

    impl Allocator {
        /// Checks the internal invariants, panicking otherwise.
        fn check(&self) {
            let mut by_fw: HashMap<(FrameworkId, String), Qty> = HashMap::new();
            let mut by_role: HashMap<String, Qty> = HashMap::new();
            let mut total = [0; 4];
            assert_eq!(self.agent_slots.len(), self.agents.iter().flatten().count());
            for (id, slot) in &self.agent_slots {
                let agent = self.agents[*slot as usize].as_ref().expect("slot in use");
                assert_eq!(&agent.id, id);
                add_qty(&mut total, &qty(&agent.total), 1);
                let mut sum = agent.available.clone();
                let mut ports = agent.available.ranges_of("ports");
                for (fw, alloc) in &agent.allocations {
                    assert!(!alloc.is_empty() && self.usage[fw].agents.contains(slot), "{fw} on {id}");
                    sum.add_all(&alloc.allocated_to(None));
                    ports.extend(alloc.ranges_of("ports"));
                    for (role, part) in split_roles(alloc) {
                        add_qty(by_role.entry(role.clone()).or_default(), &qty(&part), 1);
                        add_qty(by_fw.entry((fw.clone(), role)).or_default(), &qty(&part), 1);
                    }
                }
                assert!(sum.contains(&agent.total) && agent.total.contains(&sum), "{id}: {sum}");
                ports.sort_unstable();
                assert!(ports.windows(2).all(|w| w[0].1 < w[1].0), "{id}: ports overlap: {ports:?}");
                assert!(agent.filters.windows(2).all(|w| w[0].framework <= w[1].framework), "{id}: filter order");
                for f in &agent.filters {
                    let fw = self.frameworks.values().find(|x| x.key.idx == f.framework).expect("a known framework");
                    assert!(fw.filtered_on.contains(slot), "{} filters {id}", fw.key.id);
                }
            }
            assert_eq!(total, self.total);
            for (role, q) in &self.role_alloc {
                assert_eq!(*q, by_role.get(role).copied().unwrap_or_default(), "{role}");
            }
            for (fw, usage) in &self.usage {
                assert!(usage
                    .agents
                    .iter()
                    .all(|s| self.agents[*s as usize].as_ref().is_some_and(|a| a.allocations.contains_key(fw))));
                for (role, q) in &usage.by_role {
                    let want = by_fw.get(&(fw.clone(), role.clone())).copied().unwrap_or_default();
                    assert_eq!(*q, want, "{fw} in {role}");
                }
            }
            let mut offerable = BTreeSet::new();
            for (id, fw) in &self.frameworks {
                assert_eq!(&fw.key.id, id);
                offerable.extend(fw.offerable_roles().map(|r| (r.clone(), id.clone())));
            }
            let listed =
                self.role_frameworks.iter().flat_map(|(r, m)| m.sorter.share.keys().map(|k| (r.clone(), k.id.clone())));
            assert_eq!(offerable, listed.collect());
            assert_eq!(self.roles.share.keys().collect::<BTreeSet<_>>(), self.role_frameworks.keys().collect());
        }

        /// (agent, role) pairs where some offerable framework of the role has no live filter
        /// covering what the agent has for the role: none may be left after a full cycle.
        /// Looks at every filter, ignoring what `all_filtered` remembers.
        fn left_unoffered(&self, now: Duration) -> Vec<(AgentId, String)> {
            let mut out = Vec::new();
            for agent in self.agents.iter().flatten().filter(|a| a.active) {
                for (role, members) in &self.role_frameworks {
                    let usable = agent.available.usable_by(role);
                    if !allocatable(&self.config, &usable) {
                        continue;
                    }
                    let offered = offer_of(&usable, role);
                    let refused = |fw: &FwKey| {
                        agent.filters.iter().any(|f| {
                            f.framework == fw.idx
                                && f.until > now
                                && f.refused.role == *role
                                && f.refused.resources.contains(&offered)
                        })
                    };
                    if !members.sorter.share.keys().all(refused) {
                        out.push((agent.id.clone(), role.clone()));
                    }
                }
            }
            out
        }

        fn filter_count(&self) -> usize {
            self.agents.iter().flatten().map(|a| a.filters.len()).sum()
        }
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
        AddAgent { agent: u8, cpus: u8, mem: u16, port: u16, reserved: bool, used_by: Option<u8> },
        RemoveAgent(u8),
        ToggleAgent(u8),
        AddFramework { fw: u8, roles: u8, suppressed: u8 },
        RemoveFramework(u8),
        ToggleFramework(u8),
        Suppress(u8, u8),
        Revive(u8, u8),
        Weight(u8, u8),
        Allocate(u8),
        AllocateAgents(Vec<u8>),
        Recover { fw: u8, agent: u8, part: u8, refuse: Option<u8> },
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
                    Op::ToggleFramework(i) => match a.frameworks.get(&f(i)).map(|x| x.active) {
                        Some(true) => a.deactivate_framework(&f(i)),
                        _ => a.activate_framework(&f(i)),
                    },
                    Op::Suppress(i, m) => a.suppress(&f(i), &mask(m)),
                    Op::Revive(i, m) => a.revive(&f(i), &mask(m)),
                    Op::Weight(r, w) => a.set_weight(&mask(1 << r)[0], f64::from(w)),
                    Op::Allocate(dt) => {
                        now += secs(u64::from(dt));
                        made = a.allocate(now);
                        let left = a.left_unoffered(now);
                        prop_assert!(left.is_empty(), "not offered after a full cycle: {left:?}");
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
                // Every new allocation came out of what was available, none of it twice.
                let mut given: BTreeMap<AgentId, Resources> = BTreeMap::new();
                for x in &made {
                    let fw = &a.frameworks[&x.framework_id];
                    prop_assert!(fw.offerable_roles().any(|r| *r == x.role) && a.agent(&x.agent_id).is_some_and(|s| s.active));
                    prop_assert!(x.resources.iter().all(|r| r.allocation_role() == Some(x.role.as_str())));
                    prop_assert!(x.resources.iter().all(|r| !r.is_reserved() || r.reservation_role() == x.role));
                    prop_assert!(allocatable(&a.config, &x.resources));
                    given.entry(x.agent_id.clone()).or_default().add_all(&x.resources.allocated_to(None));
                }
                for (agent, sum) in &given {
                    prop_assert!(before[agent].contains(sum), "{agent}: gave {sum} out of {}", before[agent]);
                }
            }
        }
    }
}
