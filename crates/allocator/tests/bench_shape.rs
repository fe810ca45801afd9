//! The smallest benchmark shape (1,000 agents × 100 frameworks, Mesos's `DeclineOffers`),
//! run once for correctness only: every framework is offered every agent exactly once
//! before all of them have declined everything, and no resource is offered twice.

// Shared with the benchmarks, which use all of it.
#[path = "../benches/shapes/mod.rs"]
#[allow(dead_code)]
mod shapes;

use agora_api::{AgentId, FrameworkId, Resources};
use shapes::{agent_id, Cluster, Roles, LONG_REFUSE};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[test]
fn declining_shape_offers_every_agent_to_every_framework_once() {
    let (agents, frameworks) = (1_000, 100);
    let mut cl = Cluster::new(agents, frameworks, Roles::Star);
    let ids: Vec<AgentId> = (0..agents).map(agent_id).collect();
    let mut offered: HashSet<(FrameworkId, AgentId)> = HashSet::new();
    let mut cycles = 0;
    loop {
        let before: BTreeMap<&AgentId, Resources> =
            ids.iter().map(|id| (id, cl.allocator.available(id).expect("a known agent"))).collect();
        cl.now += Duration::from_secs(1);
        let offers = cl.allocator.allocate(cl.now);
        if offers.is_empty() {
            break;
        }
        cycles += 1;
        let mut given: BTreeMap<&AgentId, Resources> = BTreeMap::new();
        for o in &offers {
            assert_eq!(o.role, "*");
            assert!(o.resources.iter().all(|r| r.allocation_role() == Some("*")));
            let pair = (o.framework_id.clone(), o.agent_id.clone());
            assert!(offered.insert(pair), "{} offered {} again after declining it", o.framework_id, o.agent_id);
            given.entry(&o.agent_id).or_default().add_all(&o.resources.allocated_to(None));
        }
        for (id, sum) in &given {
            let mut after = cl.allocator.available(id).expect("a known agent");
            assert!(before[id].contains(sum), "{id}: offered {sum} out of {}", before[id]);
            after.add_all(sum);
            assert!(after.contains(&before[id]) && before[id].contains(&after), "{id}: offered twice");
        }
        for o in &offers {
            cl.allocator.recover(&o.framework_id, &o.agent_id, &o.resources, Some(LONG_REFUSE), cl.now);
        }
        assert!(cycles <= frameworks, "still offering after {cycles} cycles");
    }
    assert_eq!(offered.len(), agents * frameworks, "every framework is offered every agent");
    assert_eq!(cycles, frameworks, "one offer per agent per cycle");
}
