//! Criterion: encoding tasks as JSON (the bulk of `/master/state` and GET_STATE): the
//! derived serde serializer against the hand-written `agora_api::encode::task`.
use agora_api::Task;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn task(i: usize) -> Task {
    serde_json::from_value(serde_json::json!({
        "name": format!("load-0-{i}"),
        "task_id": {"value": format!("load-0-{i}")},
        "framework_id": {"value": "486eb537-23ac-4a8f-ba90-6ddf1f29c674-0000"},
        "agent_id": {"value": format!("486eb537-23ac-4a8f-ba90-6ddf1f29c674-S{}", i % 40000)},
        "state": "TASK_RUNNING",
        "resources": [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}, "allocation_info": {"role": "load-0"}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": 16.0}, "allocation_info": {"role": "load-0"}}
        ],
        "statuses": [{
            "task_id": {"value": format!("load-0-{i}")},
            "state": "TASK_RUNNING",
            "source": "SOURCE_EXECUTOR",
            "agent_id": {"value": format!("486eb537-23ac-4a8f-ba90-6ddf1f29c674-S{}", i % 40000)},
            "timestamp": 1796371489.8718488,
            "uuid": "yIDWBsqoTz2aza3TctFvow=="
        }],
        "status_update_state": "TASK_RUNNING",
        "status_update_uuid": "yIDWBsqoTz2aza3TctFvow==",
        "user": "root"
    }))
    .expect("task")
}

fn bench(c: &mut Criterion) {
    let tasks: Vec<Task> = (0..10_000).map(task).collect();
    let bytes = serde_json::to_vec(&tasks).expect("encode").len();
    let mut g = c.benchmark_group("encode 10,000 tasks");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("serde_json", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(bytes + 1024);
            for t in &tasks {
                serde_json::to_writer(&mut buf, t).expect("encode");
            }
            buf
        })
    });
    g.bench_function("agora_api::encode", |b| {
        b.iter(|| {
            let mut buf = Vec::with_capacity(bytes + 1024);
            for t in &tasks {
                agora_api::encode::task(&mut buf, t).expect("encode");
            }
            buf
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
