//! The cluster shapes of Mesos's `HierarchicalAllocator_BENCHMARK_Test.DeclineOffers`,
//! shared by the criterion benchmarks and the correctness test that runs the smallest one.
//!
//! Every agent has `cpus:24;mem:4096;disk:4096;ports:[31000-32000]`, of which
//! `cpus:16;mem:2014;disk:1024` and 16 port ranges are in use by one framework, chosen
//! round-robin. As in Mesos's benchmark, every framework is in the role `*`; the quota shape
//! instead gives each framework a role of its own.

use agora_allocator::{Allocation, Allocator, Config};
use agora_api::{AgentId, FrameworkId, Resources};
use std::time::Duration;

pub const AGENT: &str = "cpus:24;mem:4096;disk:4096;ports:[31000-32000]";

/// Mesos's "long filter": `refuse_seconds = INT_MAX`.
pub const LONG_REFUSE: Duration = Duration::from_secs(i32::MAX as u64);

/// What is in use on every agent: 16 tasks of one cpu and one small port range each.
pub fn used(role: &str) -> Resources {
    let ranges: Vec<String> = (0..16).map(|i| format!("{}-{}", 31000 + 62 * i, 31001 + 62 * i)).collect();
    let text = format!("cpus:16;mem:2014;disk:1024;ports:[{}]", ranges.join(","));
    Resources::parse(&text).expect("valid resources").allocated_to(Some(role))
}

/// The id of agent `i` of a [`Cluster`].
pub fn agent_id(i: usize) -> AgentId {
    AgentId::new(format!("agent{i}"))
}

/// How the frameworks are spread over roles.
#[derive(Clone, Copy, Debug)]
pub enum Roles {
    /// All in `*`, as in Mesos's `DeclineOffers` benchmark.
    Star,
    /// Framework `i` alone in role `role{i}`: the quota shape, without quotas.
    OnePerFramework,
}

pub struct Cluster {
    pub allocator: Allocator,
    pub frameworks: Vec<FrameworkId>,
    pub now: Duration,
}

impl Cluster {
    /// `agents` agents and `frameworks` frameworks, every agent partly used; nothing offered yet.
    pub fn new(agents: usize, frameworks: usize, roles: Roles) -> Cluster {
        let mut allocator = Allocator::new(Config::default());
        let role_of = |i: usize| match roles {
            Roles::Star => "*".to_string(),
            Roles::OnePerFramework => format!("role{i}"),
        };
        let frameworks: Vec<FrameworkId> = (0..frameworks).map(|i| FrameworkId::new(format!("framework{i}"))).collect();
        for (i, fw) in frameworks.iter().enumerate() {
            allocator.add_framework(fw, &[role_of(i)], &[], true);
        }
        let total = Resources::parse(AGENT).expect("valid resources");
        let used: Vec<Resources> = (0..frameworks.len().min(agents)).map(|i| used(&role_of(i))).collect();
        let agents: Vec<AgentId> = (0..agents).map(agent_id).collect();
        for (i, agent) in agents.iter().enumerate() {
            let f = i % frameworks.len();
            allocator.add_agent(agent, &total, &[(frameworks[f].clone(), used[f].clone())]);
        }
        Cluster { allocator, frameworks, now: Duration::ZERO }
    }

    /// Hands the offers back unused, as a framework that declines without a filter.
    pub fn recover(&mut self, offers: &[Allocation]) {
        for o in offers {
            self.allocator.recover(&o.framework_id, &o.agent_id, &o.resources, None, self.now);
        }
    }

    /// Every framework declines every agent's offer with a long filter: the state Mesos's
    /// `DeclineOffers` reaches after enough rounds (frameworks in `*` only). To get there in
    /// one cycle per framework rather than in a cycle per framework per agent, all frameworks
    /// but one are suppressed (through `update_framework`, which keeps filters) while that one
    /// is offered every agent and declines.
    pub fn decline_everywhere(&mut self) {
        let star = ["*".to_string()];
        for fw in &self.frameworks {
            self.allocator.update_framework(fw, &star, &star);
        }
        for fw in &self.frameworks {
            self.allocator.update_framework(fw, &star, &[]);
            for o in self.allocator.allocate(self.now) {
                self.allocator.recover(&o.framework_id, &o.agent_id, &o.resources, Some(LONG_REFUSE), self.now);
            }
            self.allocator.update_framework(fw, &star, &star);
        }
        for fw in &self.frameworks {
            self.allocator.update_framework(fw, &star, &[]);
        }
    }
}
