//! Allocation cycles in the shapes of Mesos's `HierarchicalAllocator_BENCHMARK_Test`; see
//! `shapes.rs` and docs/benchmarks.md. Each figure is the time from the allocation trigger
//! (`allocate` or `allocate_agents`) until it returns the last offer; handing offers back
//! between cycles is not timed.
//!
//! `cargo bench -p agora-allocator` runs them all; a filter such as
//! `cargo bench -p agora-allocator -- unfiltered/10000x1000` runs one.

mod shapes;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use shapes::{Cluster, Roles};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Agents × frameworks, as issue 8 lists them, plus 10,000 × 100 to compare with the
/// fully filtered round.
const SHAPES: [(usize, usize); 7] =
    [(1_000, 100), (10_000, 100), (10_000, 1_000), (20_000, 2_000), (30_000, 200), (30_000, 3_000), (50_000, 1_000)];

/// Shapes for the fully filtered round. Getting there takes one offer and one decline per
/// agent and framework (about 10 µs a pair), so the larger shapes are left out.
const FILTERED_SHAPES: [(usize, usize); 2] = [(1_000, 100), (10_000, 100)];

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

/// (a) A cycle with every agent's unused resources available and no filters: every agent
/// is offered to one framework.
fn unfiltered(c: &mut Criterion) {
    let mut g = group(c, "unfiltered");
    for (agents, frameworks) in SHAPES {
        let mut cl = Cluster::new(agents, frameworks, Roles::Star);
        let mut offers = Vec::new();
        g.bench_function(format!("{agents}x{frameworks}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    cl.recover(&offers);
                    cl.now += Duration::from_secs(1);
                    let start = Instant::now();
                    offers = cl.allocator.allocate(cl.now);
                    spent += start.elapsed();
                    assert_eq!(offers.len(), agents);
                }
                spent
            })
        });
    }
}

/// (b) Mesos's "declined" round: every framework has declined every agent with a long
/// filter, so a cycle offers nothing. `filtered` is the steady state; `filtered_first` the
/// first cycle after the role's set of frameworks changed, when every agent's filters are
/// looked at again.
fn filtered(c: &mut Criterion) {
    let mut g = group(c, "filtered");
    for (agents, frameworks) in FILTERED_SHAPES {
        let mut cl = Cluster::new(agents, frameworks, Roles::Star);
        cl.decline_everywhere();
        g.bench_function(format!("{agents}x{frameworks}"), |b| {
            b.iter(|| {
                cl.now += Duration::from_secs(1);
                let offers = cl.allocator.allocate(cl.now);
                assert!(offers.is_empty());
            })
        });
        let dummy = agora_api::FrameworkId::new("dummy");
        g.bench_function(format!("first/{agents}x{frameworks}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    // A framework joins and leaves the role: what every agent's filters
                    // were found to cover no longer tells about the role as a whole.
                    cl.allocator.add_framework(&dummy, &["*".to_string()], &[], true);
                    cl.allocator.remove_framework(&dummy);
                    cl.now += Duration::from_secs(1);
                    let start = Instant::now();
                    let offers = cl.allocator.allocate(cl.now);
                    spent += start.elapsed();
                    assert!(offers.is_empty());
                }
                spent
            })
        });
    }
}

/// (c) One agent's resources change (its offer comes back) and only that agent is
/// allocated: the cost must not grow with the cluster.
fn agent_change(c: &mut Criterion) {
    let mut g = group(c, "agent_change");
    g.warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(1));
    for (agents, frameworks) in SHAPES {
        let mut cl = Cluster::new(agents, frameworks, Roles::Star);
        let mut offers = cl.allocator.allocate(cl.now);
        let mut next = 0;
        g.bench_function(format!("{agents}x{frameworks}"), |b| {
            b.iter(|| {
                let o = &offers[next];
                cl.allocator.recover(&o.framework_id, &o.agent_id, &o.resources, None, cl.now);
                let mut made = cl.allocator.allocate_agents(std::slice::from_ref(&o.agent_id), cl.now);
                offers[next] = made.pop().expect("the agent is offered again");
                next = (next + 1) % offers.len();
            })
        });
        black_box(&offers);
    }
}

/// (d) The quota shape, 3,000 agents × 3,000 roles of one framework each (the allocator has
/// no quotas yet): a cycle with everything available, and one with nothing available.
fn quota_shape(c: &mut Criterion) {
    let mut g = group(c, "quota_shape");
    let (agents, roles) = (3_000, 3_000);
    let mut cl = Cluster::new(agents, roles, Roles::OnePerFramework);
    let mut offers = Vec::new();
    g.bench_function(format!("{agents}x{roles}/full"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                cl.recover(&offers);
                cl.now += Duration::from_secs(1);
                let start = Instant::now();
                offers = cl.allocator.allocate(cl.now);
                spent += start.elapsed();
                assert_eq!(offers.len(), agents);
            }
            spent
        })
    });
    g.bench_function(format!("{agents}x{roles}/empty"), |b| {
        b.iter(|| {
            cl.now += Duration::from_secs(1);
            assert!(cl.allocator.allocate(cl.now).is_empty());
        })
    });
}

criterion_group!(benches, unfiltered, filtered, agent_change, quota_shape);
criterion_main!(benches);
