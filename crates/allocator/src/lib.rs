//! Hierarchical DRF allocator, in the manner of Mesos's `HierarchicalDRFAllocator`.
//!
//! Two levels of dominant resource fairness: roles are ordered by their weighted dominant
//! share, then the frameworks of a role by their dominant share within that role. Each cycle
//! walks the active agents (the starting agent rotates between cycles) and hands all of an
//! agent's resources usable by a role (unreserved, or reserved to it) to the first framework
//! of that role, in DRF order, that is active, has not suppressed the role and has no live
//! refuse filter covering them.
//!
//! **Architecture Invariant:** the allocator performs no I/O, reads no clock (the caller
//! passes `now`) and is deterministic: the same calls give the same allocations. For every
//! agent, the sum of its allocations plus its available resources equals its total.
#![forbid(unsafe_code)]

use agora_api::{AgentId, FrameworkId, Resources};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::ops::Bound::{Excluded, Unbounded};
use std::time::Duration;

/// Tunables of the allocator.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// A set of resources with at least this many cpus is worth offering.
    pub min_allocatable_cpus: f64,
    /// A set of resources with at least this much memory (MB) is worth offering.
    pub min_allocatable_mem: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_allocatable_cpus: 0.01,
            min_allocatable_mem: 32.0,
        }
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

/// The scalars dominant shares are computed over.
const SHARE_KINDS: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

/// Amounts of [`SHARE_KINDS`] in thousandths (Mesos's fixed point), so sums stay exact.
type Qty = [i64; 4];

fn qty(r: &Resources) -> Qty {
    SHARE_KINDS.map(|name| (r.scalar(name) * 1000.0).round() as i64)
}

fn add_qty(into: &mut Qty, q: &Qty, sign: i64) {
    for (a, b) in into.iter_mut().zip(q) {
        *a = (*a + sign * b).max(0);
    }
}

fn dominant_share(alloc: Option<&Qty>, total: &Qty) -> f64 {
    let Some(alloc) = alloc else { return 0.0 };
    alloc
        .iter()
        .zip(total)
        .filter(|(_, t)| **t > 0)
        .map(|(a, t)| *a as f64 / *t as f64)
        .fold(0.0, f64::max)
}

/// A dominant share, totally ordered so it can key a sorted set.
#[derive(Clone, Copy, Debug)]
struct Share(f64);

impl PartialEq for Share {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Members kept in (share, key) order; updating one member costs O(log n).
#[derive(Debug)]
struct Sorter<K> {
    order: BTreeSet<(Share, K)>,
    share: HashMap<K, Share>,
}

impl<K> Default for Sorter<K> {
    fn default() -> Self {
        Sorter {
            order: BTreeSet::new(),
            share: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Sorter<K> {
    fn set(&mut self, key: K, share: Share) {
        if let Some(old) = self.share.insert(key.clone(), share) {
            if old == share {
                return;
            }
            self.order.remove(&(old, key.clone()));
        }
        self.order.insert((share, key));
    }

    fn remove(&mut self, key: &K) {
        if let Some(old) = self.share.remove(key) {
            self.order.remove(&(old, key.clone()));
        }
    }

    fn contains(&self, key: &K) -> bool {
        self.share.contains_key(key)
    }
}

#[derive(Debug)]
struct Agent {
    /// Without allocation roles, like `available`.
    total: Resources,
    available: Resources,
    /// Per framework, with allocation roles.
    allocations: BTreeMap<FrameworkId, Resources>,
    active: bool,
    /// Frameworks holding refuse filters for this agent.
    filtered_by: BTreeSet<FrameworkId>,
}

#[derive(Debug)]
struct Framework {
    roles: BTreeSet<String>,
    suppressed: BTreeSet<String>,
    active: bool,
}

impl Framework {
    fn offerable_roles(&self) -> impl Iterator<Item = &String> {
        self.roles
            .iter()
            .filter(|r| self.active && !self.suppressed.contains(*r))
    }
}

/// What a framework holds; also kept for frameworks not (yet) added, whose resources an
/// agent reported in use.
#[derive(Debug, Default)]
struct Usage {
    agents: BTreeSet<AgentId>,
    by_role: HashMap<String, Qty>,
}

#[derive(Debug)]
struct Filter {
    role: String,
    /// With allocation role `role`.
    resources: Resources,
    until: Duration,
}

/// The hierarchical DRF allocator. See the crate documentation.
#[derive(Debug)]
pub struct Allocator {
    config: Config,
    agents: BTreeMap<AgentId, Agent>,
    frameworks: HashMap<FrameworkId, Framework>,
    usage: HashMap<FrameworkId, Usage>,
    /// Allocated per role, over all frameworks (known or not).
    role_alloc: HashMap<String, Qty>,
    weights: HashMap<String, f64>,
    /// Roles with at least one offerable framework, by weighted dominant share.
    roles: Sorter<String>,
    /// Per role, its offerable frameworks by dominant share.
    role_frameworks: HashMap<String, Sorter<FrameworkId>>,
    filters: HashMap<FrameworkId, BTreeMap<AgentId, Vec<Filter>>>,
    /// Sum of all agents' totals.
    total: Qty,
    /// The total changed since shares were last computed.
    shares_stale: bool,
    /// The agent the last full cycle started at.
    last_start: Option<AgentId>,
}

fn allocatable(config: &Config, r: &Resources) -> bool {
    r.scalar("cpus") >= config.min_allocatable_cpus || r.scalar("mem") >= config.min_allocatable_mem
}

/// Groups resources by allocation role (`"*"` when unset).
fn split_roles(r: &Resources) -> BTreeMap<String, Resources> {
    let mut out: BTreeMap<String, Resources> = BTreeMap::new();
    for x in r.iter() {
        out.entry(x.allocation_role().unwrap_or("*").to_string())
            .or_default()
            .add(x);
    }
    out
}

fn role_share(
    alloc: &HashMap<String, Qty>,
    weights: &HashMap<String, f64>,
    total: &Qty,
    role: &str,
) -> Share {
    Share(dominant_share(alloc.get(role), total) / weights.get(role).copied().unwrap_or(1.0))
}

fn framework_share(
    usage: &HashMap<FrameworkId, Usage>,
    total: &Qty,
    id: &FrameworkId,
    role: &str,
) -> Share {
    Share(dominant_share(
        usage.get(id).and_then(|u| u.by_role.get(role)),
        total,
    ))
}

/// The first framework of `sorter` not filtered from `offered` on this agent. Drops expired
/// filters on the way.
fn pick_framework(
    sorter: &Sorter<FrameworkId>,
    filters: &mut HashMap<FrameworkId, BTreeMap<AgentId, Vec<Filter>>>,
    agent: &mut Agent,
    agent_id: &AgentId,
    role: &str,
    offered: &Resources,
    now: Duration,
) -> Option<FrameworkId> {
    for (_, fw) in &sorter.order {
        if let Some(per_agent) = filters.get_mut(fw) {
            if let Some(list) = per_agent.get_mut(agent_id) {
                list.retain(|f| f.until > now);
                let refused = list
                    .iter()
                    .any(|f| f.role == role && f.resources.contains(offered));
                if list.is_empty() {
                    per_agent.remove(agent_id);
                    agent.filtered_by.remove(fw);
                    if per_agent.is_empty() {
                        filters.remove(fw);
                    }
                }
                if refused {
                    continue;
                }
            }
        }
        return Some(fw.clone());
    }
    None
}

impl Allocator {
    pub fn new(config: Config) -> Self {
        Allocator {
            config,
            agents: BTreeMap::new(),
            frameworks: HashMap::new(),
            usage: HashMap::new(),
            role_alloc: HashMap::new(),
            weights: HashMap::new(),
            roles: Sorter::default(),
            role_frameworks: HashMap::new(),
            filters: HashMap::new(),
            total: [0; 4],
            shares_stale: false,
            last_start: None,
        }
    }

    /// Adds a framework (or replaces the settings of a known one).
    pub fn add_framework(
        &mut self,
        id: &FrameworkId,
        roles: &[String],
        suppressed_roles: &[String],
        active: bool,
    ) {
        self.unlist(id);
        let fw = Framework {
            roles: roles.iter().cloned().collect(),
            suppressed: suppressed_roles.iter().cloned().collect(),
            active,
        };
        self.frameworks.insert(id.clone(), fw);
        self.list(id);
    }

    /// Changes the roles a framework subscribes to and the ones it suppresses.
    pub fn update_framework(
        &mut self,
        id: &FrameworkId,
        roles: &[String],
        suppressed_roles: &[String],
    ) {
        self.change(id, |fw| {
            fw.roles = roles.iter().cloned().collect();
            fw.suppressed = suppressed_roles.iter().cloned().collect();
        });
    }

    /// Forgets a framework; its allocations on agents return to the pool.
    pub fn remove_framework(&mut self, id: &FrameworkId) {
        self.unlist(id);
        self.frameworks.remove(id);
        self.clear_filters(id, None);
        let Some(usage) = self.usage.remove(id) else {
            return;
        };
        for agent_id in &usage.agents {
            let Some(agent) = self.agents.get_mut(agent_id) else {
                continue;
            };
            if let Some(alloc) = agent.allocations.remove(id) {
                agent.available.add_all(&alloc.allocated_to(None));
                self.untrack(id, &alloc);
            }
        }
    }

    pub fn activate_framework(&mut self, id: &FrameworkId) {
        self.change(id, |fw| fw.active = true);
    }

    /// The framework gets no offers while inactive but keeps what it holds. As in Mesos, its
    /// refuse filters are dropped.
    pub fn deactivate_framework(&mut self, id: &FrameworkId) {
        self.change(id, |fw| fw.active = false);
        self.clear_filters(id, None);
    }

    /// Stops offers for `roles` (empty: all of the framework's roles).
    pub fn suppress(&mut self, id: &FrameworkId, roles: &[String]) {
        self.change(id, |fw| {
            let chosen: Vec<String> = if roles.is_empty() {
                fw.roles.iter().cloned().collect()
            } else {
                roles.to_vec()
            };
            fw.suppressed.extend(chosen);
        });
    }

    /// Resumes offers for `roles` (empty: all) and clears the refuse filters for them.
    pub fn revive(&mut self, id: &FrameworkId, roles: &[String]) {
        if !self.frameworks.contains_key(id) {
            return;
        }
        if roles.is_empty() {
            self.change(id, |fw| fw.suppressed.clear());
            self.clear_filters(id, None);
        } else {
            let roles: BTreeSet<String> = roles.iter().cloned().collect();
            self.change(id, |fw| fw.suppressed.retain(|r| !roles.contains(r)));
            self.clear_filters(id, Some(&roles));
        }
    }

    /// Adds an agent (replacing one with the same id). `used`: resources already in use per
    /// framework, each carrying its allocation role; they count as allocated.
    pub fn add_agent(
        &mut self,
        id: &AgentId,
        total: &Resources,
        used: &[(FrameworkId, Resources)],
    ) {
        if self.agents.contains_key(id) {
            self.remove_agent(id);
        }
        let total = total.allocated_to(None);
        let mut available = total.clone();
        let mut grants = Vec::new();
        for (fw, res) in used {
            for r in res.iter() {
                let role = match r.allocation_role() {
                    Some(role) => role.to_string(),
                    None => self.default_role(fw),
                };
                // Only what the agent actually has can be in use.
                let mut taken = available.clone();
                available.subtract(&r.clone().with_allocation(None));
                taken.subtract_all(&available);
                if !taken.is_empty() {
                    grants.push((fw.clone(), taken.allocated_to(Some(&role)), role));
                }
            }
        }
        add_qty(&mut self.total, &qty(&total), 1);
        self.shares_stale = true;
        let agent = Agent {
            total,
            available,
            allocations: BTreeMap::new(),
            active: true,
            filtered_by: BTreeSet::new(),
        };
        self.agents.insert(id.clone(), agent);
        for (fw, res, role) in grants {
            self.grant(id, &fw, &role, &res);
        }
    }

    /// Forgets an agent and everything allocated on it.
    pub fn remove_agent(&mut self, id: &AgentId) {
        let Some(agent) = self.agents.remove(id) else {
            return;
        };
        for (fw, alloc) in &agent.allocations {
            self.untrack(fw, &alloc);
            if let Some(usage) = self.usage.get_mut(fw) {
                usage.agents.remove(id);
                if usage.agents.is_empty() {
                    self.usage.remove(fw);
                }
            }
        }
        for fw in &agent.filtered_by {
            if let Some(per_agent) = self.filters.get_mut(fw) {
                per_agent.remove(id);
                if per_agent.is_empty() {
                    self.filters.remove(fw);
                }
            }
        }
        add_qty(&mut self.total, &qty(&agent.total), -1);
        self.shares_stale = true;
    }

    pub fn activate_agent(&mut self, id: &AgentId) {
        if let Some(agent) = self.agents.get_mut(id) {
            agent.active = true;
        }
    }

    /// No offers are made from an inactive agent; its allocations stay.
    pub fn deactivate_agent(&mut self, id: &AgentId) {
        if let Some(agent) = self.agents.get_mut(id) {
            agent.active = false;
        }
    }

    /// Takes back resources (declined, unused, freed or rescinded). Only what the framework
    /// holds on the agent is taken back. `refuse: Some(d)` keeps these resources (or any
    /// subset) from being offered to the framework on this agent until `now + d`.
    pub fn recover(
        &mut self,
        framework_id: &FrameworkId,
        agent_id: &AgentId,
        resources: &Resources,
        refuse: Option<Duration>,
        now: Duration,
    ) {
        if !self.agents.contains_key(agent_id) {
            return;
        }
        let resources = if resources.iter().all(|r| r.allocation_role().is_some()) {
            resources.clone()
        } else {
            let role = self.default_role(framework_id);
            Resources::from_vec(
                resources
                    .iter()
                    .map(|r| {
                        if r.allocation_role().is_some() {
                            r.clone()
                        } else {
                            r.clone().with_allocation(Some(&role))
                        }
                    })
                    .collect(),
            )
        };
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        if let Some(alloc) = agent.allocations.get_mut(framework_id) {
            let mut released = alloc.clone();
            alloc.subtract_all(&resources);
            released.subtract_all(alloc);
            let emptied = alloc.is_empty();
            if emptied {
                agent.allocations.remove(framework_id);
            }
            agent.available.add_all(&released.allocated_to(None));
            self.untrack(framework_id, &released);
            if emptied {
                if let Some(usage) = self.usage.get_mut(framework_id) {
                    usage.agents.remove(agent_id);
                    if usage.agents.is_empty() {
                        self.usage.remove(framework_id);
                    }
                }
            }
        }
        let Some(d) = refuse.filter(|d| !d.is_zero()) else {
            return;
        };
        if !self.frameworks.contains_key(framework_id) {
            return;
        }
        let until = now.saturating_add(d);
        let list = self
            .filters
            .entry(framework_id.clone())
            .or_default()
            .entry(agent_id.clone())
            .or_default();
        list.retain(|f| f.until > now);
        for (role, resources) in split_roles(&resources) {
            list.push(Filter {
                role,
                resources,
                until,
            });
        }
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent.filtered_by.insert(framework_id.clone());
        }
    }

    /// Runs one allocation cycle over all agents, starting one agent further than the last
    /// cycle did. Returns the offers to make.
    pub fn allocate(&mut self, now: Duration) -> Vec<Allocation> {
        self.refresh_shares();
        let mut out = Vec::new();
        let start = match &self.last_start {
            Some(last) => self
                .agents
                .range::<AgentId, _>((Excluded(last), Unbounded))
                .next(),
            None => None,
        }
        .or_else(|| self.agents.iter().next())
        .map(|(k, _)| k.clone());
        let Some(start) = start else { return out };
        let mut current = start.clone();
        loop {
            self.allocate_agent(&current, now, &mut out);
            let next = self
                .agents
                .range::<AgentId, _>((Excluded(&current), Unbounded))
                .next()
                .or_else(|| self.agents.iter().next())
                .map(|(k, _)| k.clone());
            match next {
                Some(next) if next != start => current = next,
                _ => break,
            }
        }
        self.last_start = Some(start);
        out
    }

    /// Like [`Allocator::allocate`], over the given agents only (in the given order).
    pub fn allocate_agents(&mut self, agents: &[AgentId], now: Duration) -> Vec<Allocation> {
        self.refresh_shares();
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for id in agents {
            if seen.insert(id) {
                self.allocate_agent(id, now, &mut out);
            }
        }
        out
    }

    /// Sets a role's weight (default 1). Non-positive or non-finite weights are ignored.
    pub fn set_weight(&mut self, role: &str, weight: f64) {
        if !(weight.is_finite() && weight > 0.0) {
            return;
        }
        self.weights.insert(role.to_string(), weight);
        if self.roles.contains(&role.to_string()) {
            let share = role_share(&self.role_alloc, &self.weights, &self.total, role);
            self.roles.set(role.to_string(), share);
        }
    }

    /// Everything currently allocated to the framework (offered or in use), over all agents.
    pub fn allocated(&self, framework_id: &FrameworkId) -> Resources {
        let mut out = Resources::new();
        for agent_id in self
            .usage
            .get(framework_id)
            .map(|u| &u.agents)
            .into_iter()
            .flatten()
        {
            out.add_all(&self.allocation_on(framework_id, agent_id));
        }
        out
    }

    /// What the framework holds on one agent (empty if nothing or unknown).
    pub fn allocation_on(&self, framework_id: &FrameworkId, agent_id: &AgentId) -> Resources {
        self.agents
            .get(agent_id)
            .and_then(|a| a.allocations.get(framework_id))
            .cloned()
            .unwrap_or_default()
    }

    /// The unallocated resources of an agent.
    pub fn available(&self, agent_id: &AgentId) -> Option<Resources> {
        self.agents.get(agent_id).map(|a| a.available.clone())
    }

    /// The total resources of an agent.
    pub fn agent_total(&self, agent_id: &AgentId) -> Option<Resources> {
        self.agents.get(agent_id).map(|a| a.total.clone())
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    pub fn framework_count(&self) -> usize {
        self.frameworks.len()
    }

    /// Offers the agent's resources role by role, in DRF order.
    fn allocate_agent(&mut self, agent_id: &AgentId, now: Duration, out: &mut Vec<Allocation>) {
        let mut cursor: Option<(Share, String)> = None;
        loop {
            let Some(agent) = self.agents.get_mut(agent_id) else {
                return;
            };
            if !agent.active || !allocatable(&self.config, &agent.available) {
                return;
            }
            // A role moves back when it gets resources; it then has nothing left to use
            // here, so visiting it again is harmless.
            let next = match &cursor {
                None => self.roles.order.iter().next(),
                Some(c) => self.roles.order.range((Excluded(c), Unbounded)).next(),
            };
            let Some(entry) = next.cloned() else { return };
            let role = entry.1.clone();
            cursor = Some(entry);
            let usable = agent.available.usable_by(&role);
            if !allocatable(&self.config, &usable) {
                continue;
            }
            let offered = usable.allocated_to(Some(&role));
            let Some(sorter) = self.role_frameworks.get(&role) else {
                continue;
            };
            let Some(fw) = pick_framework(
                sorter,
                &mut self.filters,
                agent,
                agent_id,
                &role,
                &offered,
                now,
            ) else {
                continue;
            };
            agent.available.subtract_all(&usable);
            self.grant(agent_id, &fw, &role, &offered);
            out.push(Allocation {
                framework_id: fw,
                agent_id: agent_id.clone(),
                role,
                resources: offered,
            });
        }
    }

    /// Records `res` (with allocation role `role`) as allocated; the caller took it from
    /// the agent's available resources.
    fn grant(&mut self, agent_id: &AgentId, fw: &FrameworkId, role: &str, res: &Resources) {
        if let Some(agent) = self.agents.get_mut(agent_id) {
            agent
                .allocations
                .entry(fw.clone())
                .or_default()
                .add_all(res);
        }
        self.usage
            .entry(fw.clone())
            .or_default()
            .agents
            .insert(agent_id.clone());
        self.track(fw, role, &qty(res), 1);
    }

    /// Takes allocated resources (any roles) off the share accounting.
    fn untrack(&mut self, fw: &FrameworkId, res: &Resources) {
        for (role, part) in split_roles(res) {
            self.track(fw, &role, &qty(&part), -1);
        }
    }

    fn track(&mut self, fw: &FrameworkId, role: &str, q: &Qty, sign: i64) {
        add_qty(
            self.role_alloc.entry(role.to_string()).or_default(),
            q,
            sign,
        );
        if let Some(usage) = self.usage.get_mut(fw) {
            add_qty(usage.by_role.entry(role.to_string()).or_default(), q, sign);
        }
        if self.roles.contains(&role.to_string()) {
            let share = role_share(&self.role_alloc, &self.weights, &self.total, role);
            self.roles.set(role.to_string(), share);
        }
        if let Some(sorter) = self.role_frameworks.get_mut(role) {
            if sorter.contains(fw) {
                sorter.set(
                    fw.clone(),
                    framework_share(&self.usage, &self.total, fw, role),
                );
            }
        }
    }

    /// Recomputes every share after the cluster total changed.
    fn refresh_shares(&mut self) {
        if !self.shares_stale {
            return;
        }
        self.shares_stale = false;
        let roles: Vec<String> = self.roles.share.keys().cloned().collect();
        for role in roles {
            let share = role_share(&self.role_alloc, &self.weights, &self.total, &role);
            self.roles.set(role, share);
        }
        for (role, sorter) in &mut self.role_frameworks {
            let fws: Vec<FrameworkId> = sorter.share.keys().cloned().collect();
            for fw in fws {
                let share = framework_share(&self.usage, &self.total, &fw, role);
                sorter.set(fw, share);
            }
        }
    }

    /// Applies a change to a known framework, keeping the sorters in step.
    fn change(&mut self, id: &FrameworkId, f: impl FnOnce(&mut Framework)) {
        if !self.frameworks.contains_key(id) {
            return;
        }
        self.unlist(id);
        if let Some(fw) = self.frameworks.get_mut(id) {
            f(fw);
        }
        self.list(id);
    }

    /// Takes a framework out of the sorters.
    fn unlist(&mut self, id: &FrameworkId) {
        let Some(fw) = self.frameworks.get(id) else {
            return;
        };
        for role in &fw.roles {
            if let Some(sorter) = self.role_frameworks.get_mut(role) {
                sorter.remove(id);
                if sorter.share.is_empty() {
                    self.role_frameworks.remove(role);
                    self.roles.remove(role);
                }
            }
        }
    }

    /// Puts a framework in the sorters of the roles it can be offered for.
    fn list(&mut self, id: &FrameworkId) {
        let Some(fw) = self.frameworks.get(id) else {
            return;
        };
        for role in fw.offerable_roles() {
            let share = framework_share(&self.usage, &self.total, id, role);
            self.role_frameworks
                .entry(role.clone())
                .or_default()
                .set(id.clone(), share);
            if !self.roles.contains(role) {
                self.roles.set(
                    role.clone(),
                    role_share(&self.role_alloc, &self.weights, &self.total, role),
                );
            }
        }
    }

    /// Drops a framework's refuse filters for `roles` (all when `None`).
    fn clear_filters(&mut self, id: &FrameworkId, roles: Option<&BTreeSet<String>>) {
        let Some(per_agent) = self.filters.get_mut(id) else {
            return;
        };
        per_agent.retain(|agent_id, list| {
            match roles {
                Some(roles) => list.retain(|f| !roles.contains(&f.role)),
                None => list.clear(),
            }
            if list.is_empty() {
                if let Some(agent) = self.agents.get_mut(agent_id) {
                    agent.filtered_by.remove(id);
                }
            }
            !list.is_empty()
        });
        if per_agent.is_empty() {
            self.filters.remove(id);
        }
    }

    /// The role for resources that arrive without an allocation role: the framework's first.
    fn default_role(&self, id: &FrameworkId) -> String {
        self.frameworks
            .get(id)
            .and_then(|f| f.roles.iter().next())
            .cloned()
            .unwrap_or_else(|| "*".to_string())
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
    fn new_alloc() -> Allocator {
        Allocator::new(Config::default())
    }
    /// Who got each agent, in allocation order.
    fn winners(allocs: &[Allocation]) -> Vec<(String, String)> {
        allocs
            .iter()
            .map(|a| (a.agent_id.value.clone(), a.framework_id.value.clone()))
            .collect()
    }

    impl Allocator {
        /// Checks every internal invariant; panics with a description otherwise.
        fn check(&self) {
            let mut by_role: HashMap<String, Qty> = HashMap::new();
            let mut by_fw: HashMap<(FrameworkId, String), Qty> = HashMap::new();
            let mut total: Qty = [0; 4];
            for (id, agent) in &self.agents {
                add_qty(&mut total, &qty(&agent.total), 1);
                let mut sum = agent.available.clone();
                let mut ports = agent.available.ranges_of("ports");
                for (fw, alloc) in &agent.allocations {
                    assert!(!alloc.is_empty(), "empty allocation kept for {fw} on {id}");
                    assert!(
                        self.usage[fw].agents.contains(id),
                        "usage of {fw} misses {id}"
                    );
                    assert!(alloc.iter().all(|r| r.allocation_role().is_some()));
                    sum.add_all(&alloc.allocated_to(None));
                    ports.extend(alloc.ranges_of("ports"));
                    for (role, part) in split_roles(alloc) {
                        add_qty(by_role.entry(role.clone()).or_default(), &qty(&part), 1);
                        add_qty(by_fw.entry((fw.clone(), role)).or_default(), &qty(&part), 1);
                    }
                }
                assert!(
                    sum.contains(&agent.total) && agent.total.contains(&sum),
                    "{id}: {sum} != {}",
                    agent.total
                );
                ports.sort_unstable();
                for w in ports.windows(2) {
                    assert!(w[0].1 < w[1].0, "{id}: port ranges overlap: {ports:?}");
                }
            }
            assert_eq!(total, self.total);
            for (role, q) in &self.role_alloc {
                assert_eq!(
                    *q,
                    by_role.get(role).copied().unwrap_or_default(),
                    "role {role}"
                );
            }
            for (fw, usage) in &self.usage {
                assert!(!usage.agents.is_empty());
                for agent_id in &usage.agents {
                    assert!(self.agents[agent_id].allocations.contains_key(fw));
                }
                for (role, q) in &usage.by_role {
                    let want = by_fw
                        .get(&(fw.clone(), role.clone()))
                        .copied()
                        .unwrap_or_default();
                    assert_eq!(*q, want, "{fw} in {role}");
                }
            }
            // Sorters hold exactly the offerable (framework, role) pairs.
            let mut offerable = BTreeSet::new();
            for (id, fw) in &self.frameworks {
                offerable.extend(fw.offerable_roles().map(|r| (r.clone(), id.clone())));
            }
            let listed: BTreeSet<(String, FrameworkId)> = self
                .role_frameworks
                .iter()
                .flat_map(|(r, s)| s.share.keys().map(move |f| (r.clone(), f.clone())))
                .collect();
            assert_eq!(offerable, listed);
            let roles: BTreeSet<&String> = self.roles.share.keys().collect();
            assert_eq!(roles, self.role_frameworks.keys().collect());
            for (fw, per_agent) in &self.filters {
                for agent_id in per_agent.keys() {
                    assert!(self.agents[agent_id].filtered_by.contains(fw));
                }
            }
        }
    }

    #[test]
    fn frameworks_within_a_role_follow_drf() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_framework(&fid("f2"), &roles(&["r"]), &[], true);
        a.add_agent(&aid("a1"), &res("cpus:2;mem:1024"), &[]);
        // Tie at zero share: broken by framework id.
        assert_eq!(winners(&a.allocate(secs(0))), [("a1".into(), "f1".into())]);
        a.add_agent(&aid("a2"), &res("cpus:1;mem:512"), &[]);
        assert_eq!(
            winners(&a.allocate_agents(&[aid("a2")], secs(0))),
            [("a2".into(), "f2".into())]
        );
        // f1 holds 2 of 4 cpus, f2 1 of 4: f2 is further from its fair share.
        a.add_agent(&aid("a3"), &res("cpus:1;mem:512"), &[]);
        assert_eq!(
            winners(&a.allocate_agents(&[aid("a3")], secs(0))),
            [("a3".into(), "f2".into())]
        );
        assert_eq!(a.allocated(&fid("f2")).scalar("cpus"), 2.0);
        a.check();
    }

    #[test]
    fn roles_come_before_frameworks() {
        // Role "a" has two frameworks, role "b" one: b's framework gets half the cluster.
        let mut a = new_alloc();
        a.add_framework(&fid("fa1"), &roles(&["a"]), &[], true);
        a.add_framework(&fid("fa2"), &roles(&["a"]), &[], true);
        a.add_framework(&fid("fb"), &roles(&["b"]), &[], true);
        for i in 0..4 {
            a.add_agent(&aid(&format!("s{i}")), &res("cpus:1;mem:1024"), &[]);
        }
        let got = winners(&a.allocate(secs(0)));
        let want = [("s0", "fa1"), ("s1", "fb"), ("s2", "fa2"), ("s3", "fb")];
        assert_eq!(got, want.map(|(x, y)| (x.to_string(), y.to_string())));
        a.check();
    }

    #[test]
    fn weights_are_honoured() {
        let mut a = new_alloc();
        a.set_weight("heavy", 2.0);
        a.add_framework(&fid("fh"), &roles(&["heavy"]), &[], true);
        a.add_framework(&fid("fl"), &roles(&["light"]), &[], true);
        for i in 0..60 {
            a.add_agent(&aid(&format!("s{i:02}")), &res("cpus:1;mem:1024"), &[]);
        }
        let allocs = a.allocate(secs(0));
        assert_eq!(allocs.len(), 60);
        let heavy = allocs.iter().filter(|x| x.role == "heavy").count();
        assert!((39..=41).contains(&heavy), "heavy got {heavy} of 60");
        assert_eq!(a.allocated(&fid("fh")).scalar("cpus"), heavy as f64);
        a.check();
    }

    #[test]
    fn allocations_carry_their_role_and_are_not_offered_twice() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_agent(&aid("a1"), &res("cpus:4;mem:4096;ports:[31000-32000]"), &[]);
        let first = a.allocate(secs(0));
        assert_eq!(first.len(), 1);
        assert!(first[0]
            .resources
            .iter()
            .all(|r| r.allocation_role() == Some("r")));
        assert_eq!(first[0].resources.scalar("cpus"), 4.0);
        assert!(a.allocate(secs(1)).is_empty());
        assert_eq!(a.available(&aid("a1")), Some(Resources::new()));
        // Part of the offer comes back (unused part of an accept) and is offered again.
        let unused = res("cpus:1;mem:1024;ports:[31500-32000]").allocated_to(Some("r"));
        a.recover(&fid("f1"), &aid("a1"), &unused, None, secs(1));
        let again = a.allocate(secs(2));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].resources, unused);
        a.check();
    }

    #[test]
    fn declined_resources_come_back_after_refuse_seconds() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_agent(&aid("a1"), &res("cpus:4;mem:4096"), &[]);
        let offer = a.allocate(secs(0)).remove(0);
        a.recover(
            &fid("f1"),
            &aid("a1"),
            &offer.resources,
            Some(secs(5)),
            secs(0),
        );
        assert!(a.allocate(secs(0)).is_empty());
        assert!(a.allocate(Duration::from_millis(4999)).is_empty());
        // Another framework may take them meanwhile.
        a.add_framework(&fid("f2"), &roles(&["r"]), &[], true);
        let other = a.allocate(secs(4));
        assert_eq!(winners(&other), [("a1".into(), "f2".into())]);
        a.recover(&fid("f2"), &aid("a1"), &other[0].resources, None, secs(4));
        a.remove_framework(&fid("f2"));
        assert_eq!(winners(&a.allocate(secs(5))), [("a1".into(), "f1".into())]);
        assert!(a.filters.is_empty(), "expired filter dropped");
        a.check();
    }

    #[test]
    fn filter_applies_only_to_subsets() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_agent(&aid("a1"), &res("cpus:4;mem:4096"), &[]);
        a.allocate(secs(0));
        let half = res("cpus:2;mem:2048").allocated_to(Some("r"));
        a.recover(&fid("f1"), &aid("a1"), &half, Some(secs(60)), secs(0));
        assert!(a.allocate(secs(1)).is_empty());
        // A task ends: more is free than was refused, so the framework is offered again.
        a.recover(&fid("f1"), &aid("a1"), &half, None, secs(2));
        let offer = a.allocate(secs(3));
        assert_eq!(offer.len(), 1);
        assert_eq!(offer[0].resources.scalar("cpus"), 4.0);
    }

    #[test]
    fn revive_clears_filters_and_suppress_stops_offers() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["x", "y"]), &[], true);
        a.add_agent(&aid("a1"), &res("cpus:1;mem:512"), &[]);
        a.suppress(&fid("f1"), &roles(&["x"]));
        let offer = a.allocate(secs(0));
        assert_eq!(offer.len(), 1);
        assert_eq!(offer[0].role, "y");
        a.recover(
            &fid("f1"),
            &aid("a1"),
            &offer[0].resources,
            Some(secs(3600)),
            secs(0),
        );
        assert!(a.allocate(secs(1)).is_empty());
        a.suppress(&fid("f1"), &[]);
        a.revive(&fid("f1"), &roles(&["y"]));
        assert_eq!(a.allocate(secs(2))[0].role, "y", "filter for y cleared");
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
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], false);
        a.add_agent(&aid("a1"), &res("cpus:1;mem:512"), &[]);
        assert!(a.allocate(secs(0)).is_empty());
        a.activate_framework(&fid("f1"));
        a.deactivate_agent(&aid("a1"));
        assert!(a.allocate(secs(0)).is_empty());
        a.activate_agent(&aid("a1"));
        assert_eq!(a.allocate(secs(0)).len(), 1);
        // A deactivated framework keeps its allocation.
        a.deactivate_framework(&fid("f1"));
        assert_eq!(a.allocated(&fid("f1")).scalar("cpus"), 1.0);
        a.check();
    }

    #[test]
    fn reserved_resources_go_only_to_their_role() {
        let mut a = new_alloc();
        a.add_framework(&fid("batch"), &roles(&["batch"]), &[], true);
        a.add_agent(
            &aid("a1"),
            &res("cpus:2;mem:1024;cpus(web):4;mem(web):2048"),
            &[],
        );
        let offer = a.allocate(secs(0));
        assert_eq!(offer.len(), 1);
        assert!(offer[0].resources.iter().all(|r| !r.is_reserved()));
        assert_eq!(a.available(&aid("a1")).map(|r| r.scalar("cpus")), Some(4.0));
        a.add_framework(&fid("web"), &roles(&["web"]), &[], true);
        let offer = a.allocate(secs(0));
        assert_eq!(offer.len(), 1);
        assert_eq!(offer[0].role, "web");
        assert!(offer[0]
            .resources
            .iter()
            .all(|r| r.reservation_role() == "web"));
        a.check();
    }

    #[test]
    fn below_min_allocatable_is_not_offered() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_agent(&aid("tiny"), &res("cpus:0.005;mem:16;ports:[1-10]"), &[]);
        assert!(a.allocate(secs(0)).is_empty());
        a.add_agent(&aid("cpu-only"), &res("cpus:0.01"), &[]);
        a.add_agent(&aid("mem-only"), &res("mem:32"), &[]);
        let got = winners(&a.allocate(secs(0)));
        assert_eq!(
            got,
            [
                ("cpu-only".into(), "f1".into()),
                ("mem-only".into(), "f1".into())
            ]
        );
    }

    #[test]
    fn removals_return_or_drop_allocations() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_agent(&aid("a1"), &res("cpus:1;mem:512"), &[]);
        a.add_agent(&aid("a2"), &res("cpus:2;mem:512"), &[]);
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
        let mut a = new_alloc();
        let used = res("cpus:1;mem:256").allocated_to(Some("r"));
        // The framework has not re-registered yet.
        a.add_agent(
            &aid("a1"),
            &res("cpus:4;mem:1024"),
            &[(fid("f1"), used.clone())],
        );
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_framework(&fid("f2"), &roles(&["r"]), &[], true);
        assert_eq!(a.allocated(&fid("f1")), used);
        // f1 already holds a share, so f2 comes first.
        assert_eq!(winners(&a.allocate(secs(0))), [("a1".into(), "f2".into())]);
        a.check();
    }

    #[test]
    fn unknown_ids_are_ignored() {
        let mut a = new_alloc();
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
        assert!(a.allocate_agents(&[s.clone()], secs(0)).is_empty());
        assert!(a.allocated(&f).is_empty() && a.available(&s).is_none());
        a.check();
    }

    #[test]
    fn start_agent_rotates_between_cycles() {
        let mut a = new_alloc();
        a.add_framework(&fid("f1"), &roles(&["r"]), &[], true);
        a.add_framework(&fid("f2"), &roles(&["r"]), &[], true);
        a.add_agent(&aid("a1"), &res("cpus:1;mem:512"), &[]);
        a.add_agent(&aid("a2"), &res("cpus:1;mem:512"), &[]);
        let first = a.allocate(secs(0));
        assert_eq!(
            winners(&first),
            [("a1".into(), "f1".into()), ("a2".into(), "f2".into())]
        );
        for x in &first {
            a.recover(&x.framework_id, &x.agent_id, &x.resources, None, secs(0));
        }
        assert_eq!(
            winners(&a.allocate(secs(1))),
            [("a2".into(), "f1".into()), ("a1".into(), "f2".into())]
        );
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
    }

    const ROLES: [&str; 3] = ["a", "b", "c"];

    fn mask(m: u8) -> Vec<String> {
        ROLES
            .iter()
            .enumerate()
            .filter(|(i, _)| m & (1 << i) != 0)
            .map(|(_, r)| r.to_string())
            .collect()
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0u8..6, 0u8..8, 0u16..4096, 0u16..100, any::<bool>(), proptest::option::of(0u8..4)).prop_map(
                |(agent, cpus, mem, port, reserved, used_by)| Op::AddAgent { agent, cpus, mem, port, reserved, used_by }
            ),
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
            3 => (0u8..4, 0u8..6, 0u8..4, proptest::option::of(0u8..5))
                .prop_map(|(fw, agent, part, refuse)| Op::Recover { fw, agent, part, refuse }),
        ]
    }

    /// Some of `held`: everything, half of each scalar and port range, or things not held.
    fn portion(held: &Resources, part: u8) -> Resources {
        match part {
            0 => held.clone(),
            1 | 2 => Resources::from_vec(
                held.iter()
                    .map(|r| {
                        let mut r = r.clone();
                        if let Some(s) = r.scalar.as_mut() {
                            s.value = agora_api::resources::round3(s.value / 2.0);
                        }
                        if let Some(rs) = r.ranges.as_mut() {
                            for x in &mut rs.range {
                                x.end = x.begin + (x.end - x.begin) / 2;
                            }
                        }
                        r
                    })
                    .collect(),
            ),
            _ => res("cpus:3;mem:100;ports:[31000-31010]").allocated_to(Some("a")),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn nothing_is_offered_twice(ops in proptest::collection::vec(arb_op(), 1..60)) {
            let mut a = new_alloc();
            let mut now = Duration::ZERO;
            for op in ops {
                let before: BTreeMap<AgentId, Resources> =
                    a.agents.iter().map(|(k, v)| (k.clone(), v.available.clone())).collect();
                let mut made = Vec::new();
                match op {
                    Op::AddAgent { agent, cpus, mem, port, reserved, used_by } => {
                        let base = 31000 + u64::from(port) * 10;
                        let mut text = format!("cpus:{cpus};mem:{mem};ports:[{base}-{}]", base + 20);
                        if reserved {
                            text.push_str(";cpus(b):2;mem(b):512");
                        }
                        let used: Vec<(FrameworkId, Resources)> = used_by
                            .map(|f| (fid(&format!("f{f}")), res("cpus:1;mem:64;ports:[31000-31100]").allocated_to(Some("a"))))
                            .into_iter()
                            .collect();
                        a.add_agent(&aid(&format!("s{agent}")), &res(&text), &used);
                    }
                    Op::RemoveAgent(s) => a.remove_agent(&aid(&format!("s{s}"))),
                    Op::ToggleAgent(s) => {
                        let id = aid(&format!("s{s}"));
                        match a.agents.get(&id).map(|x| x.active) {
                            Some(true) => a.deactivate_agent(&id),
                            _ => a.activate_agent(&id),
                        }
                    }
                    Op::AddFramework { fw, roles, suppressed } => {
                        a.add_framework(&fid(&format!("f{fw}")), &mask(roles), &mask(suppressed), true);
                    }
                    Op::RemoveFramework(f) => a.remove_framework(&fid(&format!("f{f}"))),
                    Op::ToggleFramework(f) => {
                        let id = fid(&format!("f{f}"));
                        match a.frameworks.get(&id).map(|x| x.active) {
                            Some(true) => a.deactivate_framework(&id),
                            _ => a.activate_framework(&id),
                        }
                    }
                    Op::Suppress(f, m) => a.suppress(&fid(&format!("f{f}")), &mask(m)),
                    Op::Revive(f, m) => a.revive(&fid(&format!("f{f}")), &mask(m)),
                    Op::Weight(r, w) => a.set_weight(ROLES[usize::from(r)], f64::from(w)),
                    Op::Allocate(dt) => {
                        now += secs(u64::from(dt));
                        made = a.allocate(now);
                    }
                    Op::AllocateAgents(v) => {
                        let ids: Vec<AgentId> = v.iter().map(|s| aid(&format!("s{s}"))).collect();
                        made = a.allocate_agents(&ids, now);
                    }
                    Op::Recover { fw, agent, part, refuse } => {
                        let (f, s) = (fid(&format!("f{fw}")), aid(&format!("s{agent}")));
                        let held = a.allocation_on(&f, &s);
                        a.recover(&f, &s, &portion(&held, part), refuse.map(|x| secs(u64::from(x))), now);
                    }
                }
                a.check();
                // Every new allocation came out of what was available, and none twice.
                let mut given: BTreeMap<AgentId, Resources> = BTreeMap::new();
                for x in &made {
                    let fw = &a.frameworks[&x.framework_id];
                    prop_assert!(fw.active && fw.roles.contains(&x.role) && !fw.suppressed.contains(&x.role));
                    prop_assert!(a.agents[&x.agent_id].active);
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
