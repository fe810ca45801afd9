//! Recovery benchmark client: a checkpointing framework that launches N long-running tasks,
//! prints `ready` when all run, and stays subscribed (acknowledging updates) until killed.
//!
//! `cargo run --release -p agora-client --example hold_tasks -- MASTER N`
use agora_api::scheduler::EventType;
use agora_api::*;
use agora_client::{framework_info, Scheduler};
use std::io::Write as _;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let master = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:5050".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let mut info = framework_info("hold-tasks", "*");
    info.user = "root".into();
    info.checkpoint = true;
    info.failover_timeout = 3600.0;
    let mut s = Scheduler::subscribe(&master, info).await?;
    let (mut next, mut running) = (0usize, 0usize);
    let mut ready = false;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(600), s.next_event()).await??;
        match ev.kind {
            EventType::Offers => {
                for offer in ev.offers.map(|o| o.offers).unwrap_or_default() {
                    let res = Resources::from_vec(offer.resources.clone());
                    let fit = ((res.scalar("cpus") / 0.01) as usize).min(res.scalar("mem") as usize);
                    let k = fit.min(n - next).min(50);
                    if k == 0 {
                        s.decline(vec![offer.id.clone()], 3600.0).await?;
                        continue;
                    }
                    let tasks = (next..next + k)
                        .map(|i| {
                            let resources = vec![Resource::scalar("cpus", 0.01), Resource::scalar("mem", 1.0)];
                            let id = TaskId::new(format!("hold-{i}"));
                            TaskInfo::command(
                                id,
                                offer.agent_id.clone(),
                                resources,
                                CommandInfo::shell("exec sleep 100000"),
                            )
                        })
                        .collect();
                    next += k;
                    s.launch(vec![offer.id.clone()], tasks, 0.0).await?;
                }
            }
            EventType::Update => {
                let Some(u) = ev.update else { continue };
                s.acknowledge(&u.status).await?;
                if u.status.state == TaskState::Running && u.status.reason.is_none() {
                    running += 1;
                }
                if u.status.state.is_terminal() {
                    eprintln!("task {} ended: {:?} {:?}", u.status.task_id, u.status.state, u.status.message);
                }
                if running >= n && !ready {
                    ready = true;
                    println!("ready");
                    std::io::stdout().flush()?;
                }
            }
            _ => {}
        }
    }
}
