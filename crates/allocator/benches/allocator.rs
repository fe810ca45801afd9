//! Allocation cycles in the shapes of Mesos's `HierarchicalAllocator_BENCHMARK_Test`; see
//! `shapes.rs` and docs/benchmarks.md. Each figure is the time from the allocation trigger
//! (`allocate` or `allocate_agents`) until it returns the last offer; handing offers back
//! between cycles is not timed.
//!
//! `cargo bench -p agora-allocator` runs them all; a filter such as
//! `cargo bench -p agora-allocator -- unfiltered/10000x1000` runs one. At the end, every
//! benchmark that ran is printed beside its goal (issue 8) and Mesos's published figure.

mod shapes;

use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use shapes::{Cluster, Roles};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The benchmarks that ran in this invocation (a filter may leave some out), in order.
static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn ran(group: &str, name: &str) {
    let name = format!("{group}/{name}");
    if let Ok(mut ran) = RAN.lock() {
        if !ran.contains(&name) {
            ran.push(name);
        }
    }
}

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
            ran("unfiltered", &format!("{agents}x{frameworks}"));
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
            ran("filtered", &format!("{agents}x{frameworks}"));
            b.iter(|| {
                cl.now += Duration::from_secs(1);
                let offers = cl.allocator.allocate(cl.now);
                assert!(offers.is_empty());
            })
        });
        let dummy = agora_api::FrameworkId::new("dummy");
        g.bench_function(format!("first/{agents}x{frameworks}"), |b| {
            ran("filtered", &format!("first/{agents}x{frameworks}"));
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
            ran("agent_change", &format!("{agents}x{frameworks}"));
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

/// (d) The quota shape, 3,000 agents × 3,000 roles of one framework each, every role with a
/// quota guaranteeing one agent's worth (`cpus:24;mem:4096`, of which it uses 16 cpus on its
/// agent): a cycle with everything available (each agent goes to a role short of its
/// guarantee), and one with nothing available.
fn quota_shape(c: &mut Criterion) {
    let mut g = group(c, "quota_shape");
    let (agents, roles) = (3_000, 3_000);
    let mut cl = Cluster::new(agents, roles, Roles::OnePerFramework);
    let guarantee: std::collections::BTreeMap<String, f64> =
        [("cpus".to_string(), 24.0), ("mem".to_string(), 4096.0)].into_iter().collect();
    for i in 0..roles {
        let q = agora_allocator::Quota { guarantees: guarantee.clone(), limits: Default::default() };
        cl.allocator.set_quota(&format!("role{i}"), &q);
    }
    let mut offers = Vec::new();
    g.bench_function(format!("{agents}x{roles}/full"), |b| {
        ran("quota_shape", &format!("{agents}x{roles}/full"));
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
    // Whatever the cycles above left available is taken (all of it, when `full` was
    // filtered out).
    black_box(cl.allocator.allocate(cl.now));
    g.bench_function(format!("{agents}x{roles}/empty"), |b| {
        ran("quota_shape", &format!("{agents}x{roles}/empty"));
        b.iter(|| {
            cl.now += Duration::from_secs(1);
            assert!(cl.allocator.allocate(cl.now).is_empty());
        })
    });
}

/// Issue 8's goal for a benchmark, in seconds.
fn goal(name: &str) -> Option<f64> {
    match name {
        "unfiltered/10000x1000" => Some(0.050),
        "unfiltered/20000x2000" => Some(0.150),
        "unfiltered/30000x200" => Some(0.100),
        "unfiltered/30000x3000" => Some(0.250),
        "quota_shape/3000x3000/full" => Some(0.5),
        "quota_shape/3000x3000/empty" => Some(0.010),
        _ if name.starts_with("agent_change/") => Some(0.001),
        _ => None,
    }
}

/// Mesos's published figure for the shape (seconds, low and high), measured on other
/// hardware: only the order of magnitude compares. Sources in docs/benchmarks.md.
fn mesos(name: &str) -> Option<(f64, f64)> {
    match name {
        "unfiltered/10000x1000" => Some((1.06, 1.06)),
        "unfiltered/20000x2000" => Some((3.8, 3.8)),
        "quota_shape/3000x3000/full" => Some((15.0, 17.0)),
        "quota_shape/3000x3000/empty" => Some((13.0, 14.0)),
        _ => None,
    }
}

/// Where criterion keeps its results, as criterion itself works it out, except that the
/// cargo target directory is taken to be the workspace's `target` rather than asked of
/// `cargo metadata`; the directory is then given to criterion, so both agree.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("criterion")
}

/// Median and its 95 % interval, in seconds, from criterion's `estimates.json`.
fn median(dir: &Path, name: &str) -> Option<(f64, f64, f64)> {
    // Criterion's directory for `group/a/b` is `group/a_b`.
    let (group, id) = name.split_once('/')?;
    let path = dir.join(group).join(id.replace('/', "_")).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let (m, ci) = (&json["median"], &json["median"]["confidence_interval"]);
    let s = |v: &serde_json::Value| v.as_f64().map(|ns| ns / 1e9);
    Some((s(&m["point_estimate"])?, s(&ci["lower_bound"])?, s(&ci["upper_bound"])?))
}

fn show(s: f64) -> String {
    match s {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 1e-3 => format!("{:.3} ms", s * 1e3),
        s => format!("{:.2} µs", s * 1e6),
    }
}

/// One line per benchmark that ran: median [95 % interval], then its goal, Mesos's figure
/// and, for a fully filtered round, the unfiltered cycle of the same shape, each with the
/// ratio of the median to it.
fn summary(dir: &Path) {
    let ran = RAN.lock().map(|r| r.clone()).unwrap_or_default();
    if ran.is_empty() {
        return;
    }
    let shown = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    println!("\nallocator figures (medians from {}):", shown.display());
    for name in &ran {
        let Some((m, lo, hi)) = median(dir, name) else {
            println!("  {name:<30} no estimate (run without --test or --profile-time)");
            continue;
        };
        let mut line = format!("  {name:<30} {} [{} – {}]", show(m), show(lo), show(hi));
        if let Some(g) = goal(name) {
            let verdict = if m <= g { "met" } else { "MISSED" };
            line += &format!("  goal ≤ {}: {:.3}× ({verdict})", show(g), m / g);
        }
        if let Some(base) = name.strip_prefix("filtered/").map(|s| s.trim_start_matches("first/")) {
            match median(dir, &format!("unfiltered/{base}")) {
                Some((u, _, _)) => {
                    let verdict = if m <= 1.5 * u { "met" } else { "MISSED" };
                    line += &format!("  goal ≤ 1.5× unfiltered ({}): {:.2}× ({verdict})", show(u), m / u);
                }
                None => line += &format!("  (run unfiltered/{base} for the ratio)"),
            }
        }
        if let Some((lo, hi)) = mesos(name) {
            match lo == hi {
                true => line += &format!("  Mesos {}: {:.2e}×", show(lo), m / lo),
                false => line += &format!("  Mesos {lo}–{hi} s: {:.2e}–{:.2e}×", m / hi, m / lo),
            }
        }
        println!("{line}");
    }
}

fn main() {
    let dir = criterion_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    unfiltered(&mut c);
    filtered(&mut c);
    agent_change(&mut c);
    quota_shape(&mut c);
    c.final_summary();
    summary(&dir);
}
