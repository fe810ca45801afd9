//! `agora`: one binary that is the master, the agent, a whole dev cluster, the simplest
//! framework (`run`) and the operator CLI. Argument parsing and wiring only.
#![forbid(unsafe_code)]

use agora_agent::{Agent, AgentConfig};
use agora_client::views::View;
use agora_master::{Master, MasterConfig};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "agora", version, about = "Agora: a Mesos-compatible cluster manager and container orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Run a master.
    Master(MasterArgs),
    /// Run an agent (or `agora agent list`).
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        list: Option<ListCommand>,
        #[command(flatten)]
        args: AgentArgs,
    },
    /// Run a master and an agent in one process on 127.0.0.1:5050/5051.
    Dev(DevArgs),
    /// Run one command as a task and stream its output (like mesos-execute).
    Run(RunArgs),
    /// Frameworks known to the master.
    Framework {
        #[command(subcommand)]
        list: ListCommand,
    },
    /// Tasks known to the master.
    Task {
        #[command(subcommand)]
        list: ListCommand,
    },
    /// Container images in an agent's store: pull, ls, inspect, rm.
    Image {
        #[command(subcommand)]
        cmd: ImageCommand,
    },
    /// Load generator for scale benchmarks: frameworks launching tasks as fast as offers allow.
    Load(LoadArgs),
    /// The built-in command executor (started by the agent).
    #[command(hide = true)]
    Executor,
    /// The per-container supervisor (started by the agent; see docs/supervisor.md).
    #[command(hide = true)]
    Supervisor {
        #[arg(long)]
        runtime_dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct AgentAddr {
    /// The agent: host:port.
    #[arg(long, env = "AGORA_AGENT", default_value = "127.0.0.1:5051")]
    agent: String,
}

#[derive(Subcommand, Clone)]
enum ImageCommand {
    /// Pull an image into the agent's store (progress on stderr), or import a local file.
    Pull {
        #[command(flatten)]
        agent: AgentAddr,
        /// Use the stored image when the reference is already there.
        #[arg(long)]
        if_not_present: bool,
        /// Import an appc ACI file (a path on the agent's machine) instead of pulling.
        #[arg(long, conflicts_with_all = ["docker_archive", "oci_layout"])]
        aci: Option<String>,
        /// Import a `docker save` tarball (a path on the agent's machine).
        #[arg(long, conflicts_with = "oci_layout")]
        docker_archive: Option<String>,
        /// Import an OCI image layout directory (a path on the agent's machine), as NAME.
        #[arg(long)]
        oci_layout: Option<String>,
        /// The image reference (`busybox`, `host:port/ns/name:tag`, `name@sha256:...`).
        #[arg(required_unless_present_any = ["aci", "docker_archive"])]
        name: Option<String>,
    },
    /// List the images in the agent's store.
    Ls {
        #[command(flatten)]
        agent: AgentAddr,
        /// Print JSON instead of a table.
        #[arg(long, env = "AGORA_JSON")]
        json: bool,
    },
    /// Show one image (JSON).
    Inspect {
        #[command(flatten)]
        agent: AgentAddr,
        name: String,
    },
    /// Remove an image reference (and the image with its last one).
    Rm {
        #[command(flatten)]
        agent: AgentAddr,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand, Clone)]
enum ListCommand {
    /// List them as a table (or JSON).
    List(ListArgs),
}

#[derive(Args, Clone)]
struct ListArgs {
    /// The master: host:port, several (h1:5050,h2:5050) or etcd://h1:2379,h2:2379[/prefix].
    #[arg(long, env = "AGORA_MASTER", default_value = "127.0.0.1:5050")]
    master: String,
    /// Print JSON instead of a table.
    #[arg(long, env = "AGORA_JSON")]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    agora_executor::parse_mesos_duration(s).map_err(|e| e.to_string())
}

/// `--agent-removal-rate-limit N/DURATION`.
#[derive(Clone, Copy, Debug)]
struct Rate(u32, Duration);

fn parse_rate(s: &str) -> Result<Rate, String> {
    let (n, per) = s.split_once('/').ok_or_else(|| format!("'{s}' is not N/DURATION (e.g. 1/20mins)"))?;
    let n: u32 = n.trim().parse().map_err(|_| format!("'{n}' is not a count"))?;
    if n == 0 {
        return Err("the count must be at least 1".into());
    }
    let d = parse_duration(per)?;
    if d.is_zero() {
        return Err("the period must not be zero".into());
    }
    Ok(Rate(n, d))
}

/// `--weights role=2,other=1`.
#[derive(Clone, Debug)]
struct Weights(Vec<(String, f64)>);

fn parse_weights(s: &str) -> Result<Weights, String> {
    agora_master::parse_weights(s).map(Weights)
}

#[derive(Args, Clone)]
struct MasterArgs {
    /// Address to listen on.
    #[arg(long, env = "AGORA_IP", default_value = "127.0.0.1")]
    ip: String,
    #[arg(long, env = "AGORA_PORT", default_value_t = 5050)]
    port: u16,
    /// Hostname advertised to frameworks and agents.
    #[arg(long, env = "AGORA_HOSTNAME")]
    hostname: Option<String>,
    /// Where the master keeps its state.
    #[arg(long, env = "AGORA_WORK_DIR", default_value = "/var/lib/agora/master")]
    work_dir: PathBuf,
    /// Interval between allocation cycles (Mesos duration, e.g. 1secs, 500ms).
    #[arg(long, env = "AGORA_ALLOCATION_INTERVAL", default_value = "1secs", value_parser = parse_duration)]
    allocation_interval: Duration,
    /// Interval between pings to each agent.
    #[arg(long, env = "AGORA_AGENT_PING_TIMEOUT", default_value = "15secs", value_parser = parse_duration)]
    agent_ping_timeout: Duration,
    /// Missed pings before an agent is marked unreachable.
    #[arg(long, env = "AGORA_MAX_AGENT_PING_TIMEOUTS", default_value_t = 5)]
    max_agent_ping_timeouts: u32,
    /// Ended tasks kept per framework (the newest), shown in `/state` and GET_TASKS.
    #[arg(long, env = "AGORA_MAX_COMPLETED_TASKS_PER_FRAMEWORK", default_value_t = 1000)]
    max_completed_tasks_per_framework: usize,
    /// Torn-down frameworks kept (the newest), shown as completed frameworks.
    #[arg(long, env = "AGORA_MAX_COMPLETED_FRAMEWORKS", default_value_t = 50)]
    max_completed_frameworks: usize,
    /// At most N agents marked unreachable per period, e.g. `1/20mins` (default: no limit).
    #[arg(long, env = "AGORA_AGENT_REMOVAL_RATE_LIMIT", value_parser = parse_rate)]
    agent_removal_rate_limit: Option<Rate>,
    /// DRF role weights, e.g. 'web=2,batch=1' (unnamed roles weigh 1).
    #[arg(long, env = "AGORA_WEIGHTS", value_parser = parse_weights)]
    weights: Option<Weights>,
    /// Interval of HEARTBEAT events on framework subscriptions.
    #[arg(long, env = "AGORA_FRAMEWORK_HEARTBEAT_INTERVAL", default_value = "15secs", value_parser = parse_duration)]
    framework_heartbeat_interval: Duration,
    /// After an election (or a restart), how long agents of the registry have to re-register
    /// before they are marked unreachable.
    #[arg(long, env = "AGORA_AGENT_REREGISTER_TIMEOUT", default_value = "10mins", value_parser = parse_duration)]
    agent_reregister_timeout: Duration,
    /// etcd endpoints for the registry and leader election (several masters, one leader):
    /// 'http://h1:2379,http://h2:2379'. Without it the registry is embedded under --work-dir.
    #[arg(long, env = "AGORA_ETCD", value_parser = parse_etcd)]
    etcd: Option<EtcdEndpoints>,
    /// Prefix of every key Agora keeps in etcd.
    #[arg(long, env = "AGORA_ETCD_PREFIX", default_value = "/agora")]
    etcd_prefix: String,
    /// TTL of the leader's etcd lease: a dead leader is replaced within about this long
    /// (whole seconds, at least 2).
    #[arg(long, env = "AGORA_ETCD_LEASE_TTL", default_value = "3secs", value_parser = parse_duration)]
    etcd_lease_ttl: Duration,
    /// Unreachable and gone agents are pruned from the registry after this long.
    #[arg(long, env = "AGORA_REGISTRY_MAX_AGENT_AGE", default_value = "2weeks", value_parser = parse_duration)]
    registry_max_agent_age: Duration,
    /// ... and, oldest first, beyond this many.
    #[arg(long, env = "AGORA_REGISTRY_MAX_AGENT_COUNT", default_value_t = 102_400)]
    registry_max_agent_count: usize,
    /// How often the registry is pruned.
    #[arg(long, env = "AGORA_REGISTRY_GC_INTERVAL", default_value = "15mins", value_parser = parse_duration)]
    registry_gc_interval: Duration,
    /// Bytes a framework's or agent's event stream may fall behind its reader. Past it, a
    /// reader that took nothing for 10 s, or any reader past 8x it, is disconnected (it
    /// subscribes or re-registers again); the master's memory stays bounded.
    #[arg(long, env = "AGORA_MAX_STREAM_BACKLOG", default_value_t = 128 << 20)]
    max_stream_backlog: usize,
}

/// `--etcd http://h1:2379,http://h2:2379`.
#[derive(Clone, Debug)]
struct EtcdEndpoints(Vec<String>);

fn parse_etcd(s: &str) -> Result<EtcdEndpoints, String> {
    agora_registry::etcd::parse_endpoints(s).map(EtcdEndpoints).map_err(|e| e.to_string())
}

impl MasterArgs {
    fn config(&self) -> MasterConfig {
        let flags = vec![
            ("ip".into(), self.ip.clone()),
            ("port".into(), self.port.to_string()),
            ("hostname".into(), self.hostname.clone().unwrap_or_default()),
            ("work_dir".into(), self.work_dir.display().to_string()),
            ("allocation_interval".into(), format!("{:?}", self.allocation_interval)),
            ("agent_ping_timeout".into(), format!("{:?}", self.agent_ping_timeout)),
            ("max_agent_ping_timeouts".into(), self.max_agent_ping_timeouts.to_string()),
            ("max_completed_tasks_per_framework".into(), self.max_completed_tasks_per_framework.to_string()),
            ("max_completed_frameworks".into(), self.max_completed_frameworks.to_string()),
            ("agent_reregister_timeout".into(), format!("{:?}", self.agent_reregister_timeout)),
            ("registry".into(), if self.etcd.is_some() { "etcd" } else { "embedded" }.into()),
            ("etcd".into(), self.etcd.as_ref().map(|e| e.0.join(",")).unwrap_or_default()),
            ("etcd_prefix".into(), self.etcd_prefix.clone()),
            ("etcd_lease_ttl".into(), format!("{:?}", self.etcd_lease_ttl)),
            ("registry_max_agent_age".into(), format!("{:?}", self.registry_max_agent_age)),
            ("registry_max_agent_count".into(), self.registry_max_agent_count.to_string()),
            ("registry_gc_interval".into(), format!("{:?}", self.registry_gc_interval)),
            ("max_stream_backlog".into(), self.max_stream_backlog.to_string()),
        ];
        MasterConfig {
            ip: self.ip.clone(),
            port: self.port,
            hostname: self.hostname.clone(),
            work_dir: self.work_dir.clone(),
            allocation_interval: self.allocation_interval,
            agent_ping_timeout: self.agent_ping_timeout,
            max_agent_ping_timeouts: self.max_agent_ping_timeouts,
            max_completed_tasks_per_framework: self.max_completed_tasks_per_framework,
            max_completed_frameworks: self.max_completed_frameworks,
            agent_removal_rate_limit: self.agent_removal_rate_limit.map(|r| (r.0, r.1)),
            heartbeat_interval: self.framework_heartbeat_interval,
            weights: self.weights.clone().map(|w| w.0).unwrap_or_default(),
            agent_reregister_timeout: self.agent_reregister_timeout,
            etcd: self.etcd.as_ref().map(|e| agora_master::EtcdConfig {
                endpoints: e.0.clone(),
                prefix: self.etcd_prefix.clone(),
                lease_ttl: Duration::from_secs(self.etcd_lease_ttl.as_secs_f64().ceil().max(2.0) as u64),
            }),
            registry_max_agent_age: self.registry_max_agent_age,
            registry_max_agent_count: self.registry_max_agent_count,
            registry_gc_interval: self.registry_gc_interval,
            max_stream_backlog: self.max_stream_backlog,
            flags,
        }
    }
}

#[derive(Args, Clone)]
struct AgentArgs {
    /// The master: host:port, several (h1:5050,h2:5050) or etcd://h1:2379,h2:2379[/prefix].
    #[arg(long, env = "AGORA_MASTER", default_value = "127.0.0.1:5050")]
    master: String,
    #[arg(long, env = "AGORA_IP", default_value = "127.0.0.1")]
    ip: String,
    #[arg(long, env = "AGORA_PORT", default_value_t = 5051)]
    port: u16,
    #[arg(long, env = "AGORA_HOSTNAME")]
    hostname: Option<String>,
    #[arg(long, env = "AGORA_WORK_DIR", default_value = "/var/lib/agora/agent")]
    work_dir: PathBuf,
    /// Resources to offer, e.g. 'cpus:4;mem:2048;disk:10000;ports:[31000-32000]'; detected when absent.
    #[arg(long, env = "AGORA_RESOURCES")]
    resources: Option<String>,
    /// Attributes, e.g. 'rack:r1;zone:a'.
    #[arg(long, env = "AGORA_ATTRIBUTES")]
    attributes: Option<String>,
    #[arg(long, env = "AGORA_EXECUTOR_REGISTRATION_TIMEOUT", default_value = "1mins", value_parser = parse_duration)]
    executor_registration_timeout: Duration,
    #[arg(long, env = "AGORA_EXECUTOR_SHUTDOWN_GRACE_PERIOD", default_value = "5secs", value_parser = parse_duration)]
    executor_shutdown_grace_period: Duration,
    /// First retry interval of unacknowledged status updates (doubles up to 10 minutes).
    #[arg(long, env = "AGORA_STATUS_UPDATE_RETRY_INTERVAL", default_value = "10secs", value_parser = parse_duration)]
    status_update_retry_interval: Duration,
    #[arg(long, env = "AGORA_REGISTRATION_BACKOFF_FACTOR", default_value = "1secs", value_parser = parse_duration)]
    registration_backoff_factor: Duration,
    /// Isolators by their Mesos names; default as root:
    /// cgroups/cpu,cgroups/mem,cgroups/pids,namespaces/pid,namespaces/ipc,filesystem/linux,linux/capabilities,linux/nnp,linux/seccomp
    /// (posix/cpu,posix/mem otherwise).
    #[arg(long, env = "AGORA_ISOLATION")]
    isolation: Option<String>,
    /// The cgroup under which every container's cgroup lives.
    #[arg(long, env = "AGORA_CGROUPS_ROOT", default_value = "agora")]
    cgroups_root: String,
    /// Enforce CPU limits with CFS quota (hard limits), not only shares.
    #[arg(long, env = "AGORA_CGROUPS_ENABLE_CFS")]
    cgroups_enable_cfs: bool,
    /// Maximum number of processes in one container (cgroups/pids).
    #[arg(long, env = "AGORA_CGROUPS_PIDS_MAX", default_value_t = 4096)]
    cgroups_pids_max: u64,
    /// Run tasks as their user (CommandInfo.user, else FrameworkInfo.user).
    #[arg(long, env = "AGORA_SWITCH_USER", default_value_t = true, action = clap::ArgAction::Set)]
    switch_user: bool,
    /// After a restart: `reconnect` to checkpointed executors, or `cleanup` (kill them and exit).
    #[arg(long, env = "AGORA_RECOVER", default_value = "reconnect", value_parser = ["reconnect", "cleanup"])]
    recover: String,
    /// Stop on an unreadable checkpoint (false: recover what can be read).
    #[arg(long, env = "AGORA_STRICT", default_value_t = true, action = clap::ArgAction::Set)]
    strict: bool,
    /// How resources and attributes may differ from the checkpoint: `equal` or `additive`.
    #[arg(long, env = "AGORA_RECONFIGURATION_POLICY", default_value = "equal", value_parser = ["equal", "additive"])]
    reconfiguration_policy: String,
    /// How long executors have to re-subscribe after an agent restart.
    #[arg(long, env = "AGORA_EXECUTOR_REREGISTRATION_TIMEOUT", default_value = "2secs", value_parser = parse_duration)]
    executor_reregistration_timeout: Duration,
    /// Default registry for image references that name none: host[:port], http://host:port
    /// (plain HTTP), https://host; or a local directory of `docker save` tarballs.
    #[arg(long, env = "AGORA_DOCKER_REGISTRY")]
    docker_registry: Option<String>,
    /// Registries (host[:port], comma-separated) spoken to over plain HTTP.
    #[arg(long, env = "AGORA_DOCKER_REGISTRY_INSECURE", value_delimiter = ',')]
    docker_registry_insecure: Vec<String>,
    /// Docker's config.json with registry credentials.
    #[arg(long, env = "AGORA_DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// The image store (default <work-dir>/store/docker).
    #[arg(long, env = "AGORA_DOCKER_STORE_DIR")]
    docker_store_dir: Option<PathBuf>,
    /// How image rootfses are built: overlay or copy (default overlay where the kernel and
    /// the store's filesystem allow it).
    #[arg(long, env = "AGORA_IMAGE_PROVISIONER_BACKEND", value_parser = ["overlay", "copy"])]
    image_provisioner_backend: Option<String>,
    /// Image garbage collection: keep this fraction (0..1) of the store's filesystem free.
    #[arg(long, env = "AGORA_IMAGE_GC_HEADROOM")]
    image_gc_headroom: Option<f64>,
    /// Image garbage collection: keep the store's layers under this many bytes.
    #[arg(long, env = "AGORA_IMAGE_GC_MAX_STORE_BYTES")]
    image_gc_max_store_bytes: Option<u64>,
    /// Images (comma-separated references) the garbage collection never removes.
    #[arg(long, env = "AGORA_IMAGE_GC_EXCLUDED", value_delimiter = ',')]
    image_gc_excluded: Vec<String>,
    /// Host path prefixes (comma-separated) HOST_PATH volumes may name; default: none.
    #[arg(long, env = "AGORA_ALLOWED_HOST_PATHS", value_delimiter = ',')]
    allowed_host_paths: Vec<PathBuf>,
    /// disk/du, disk/xfs: kill a container whose sandbox grows over its `disk` resource.
    #[arg(long, env = "AGORA_ENFORCE_CONTAINER_DISK_QUOTA")]
    enforce_container_disk_quota: bool,
    /// disk/du: how often sandboxes are measured.
    #[arg(long, env = "AGORA_CONTAINER_DISK_WATCH_INTERVAL", default_value = "15secs", value_parser = parse_duration)]
    container_disk_watch_interval: Duration,
    /// network/cni: directory of CNI network configuration lists (`*.conflist`, `*.conf`);
    /// containers whose ContainerInfo.network_infos name one of them join it.
    #[arg(long, env = "AGORA_NETWORK_CNI_CONFIG_DIR")]
    network_cni_config_dir: Option<PathBuf>,
    /// network/cni: where the CNI plugin binaries are.
    #[arg(long, env = "AGORA_NETWORK_CNI_PLUGINS_DIR", default_value = "/usr/lib/cni")]
    network_cni_plugins_dir: PathBuf,
    /// network/cni: run the plugins inside this network namespace (a path such as
    /// /var/run/netns/NAME) instead of the agent's, e.g. to keep tests off the host's.
    #[arg(long, env = "AGORA_NETWORK_CNI_ROOT_NETNS")]
    network_cni_root_netns: Option<PathBuf>,
    /// network/ports: how often host-network containers' listening ports are checked.
    #[arg(long, env = "AGORA_CONTAINER_PORTS_WATCH_INTERVAL", default_value = "30secs", value_parser = parse_duration)]
    container_ports_watch_interval: Duration,
    /// network/ports: check only ports inside the agent's own `ports` resource.
    #[arg(long, env = "AGORA_CHECK_AGENT_PORT_RANGE_ONLY")]
    check_agent_port_range_only: bool,
    /// network/ports: kill a container listening on a port it was not given (else log it).
    #[arg(long, env = "AGORA_ENFORCE_CONTAINER_PORTS")]
    enforce_container_ports: bool,
    /// disk/xfs: the XFS project ids containers' sandboxes may get.
    #[arg(long, env = "AGORA_XFS_PROJECT_RANGE", default_value = "[5000-10000]")]
    xfs_project_range: String,
    /// Scale testing: run N simulated agents in this process instead of a real agent. Each
    /// registers over its own connection with `--resources` (default
    /// 'cpus:24;mem:4096;disk:4096;ports:[31000-32000]') and a fake containerizer.
    #[arg(long, env = "AGORA_SIMULATE")]
    simulate: Option<usize>,
    /// Simulated tasks finish after this long; `never`: they run until killed.
    #[arg(long, env = "AGORA_SIMULATE_TASK_DURATION", default_value = "never")]
    simulate_task_duration: String,
    /// Simulated agents' names are `<name>-<i>`; unique per simulating process (default sim-<pid>).
    #[arg(long, env = "AGORA_SIMULATE_NAME")]
    simulate_name: Option<String>,
    /// Spread the simulated agents' registrations over this long (0: all at once).
    #[arg(long, env = "AGORA_SIMULATE_RAMP", default_value = "0secs", value_parser = parse_duration)]
    simulate_ramp: Duration,
    /// Simulated agents sharing one HTTP/2 connection (1: each its own HTTP/1.1 connection).
    #[arg(long, env = "AGORA_SIMULATE_AGENTS_PER_CONNECTION", default_value_t = agora_http::H2_AGENTS_PER_CONNECTION)]
    simulate_agents_per_connection: usize,
    /// Ended tasks each simulated agent reports when it re-registers, made up from its running
    /// ones: the history a long-running agent holds (Mesos's failover benchmark: 4,000,000).
    #[arg(long, env = "AGORA_SIMULATE_COMPLETED_TASKS", default_value_t = 0)]
    simulate_completed_tasks: usize,
    /// Print the simulation's counters (JSON, one line) this often.
    #[arg(long, env = "AGORA_SIMULATE_REPORT_INTERVAL", default_value = "5secs", value_parser = parse_duration)]
    simulate_report_interval: Duration,
}

impl AgentArgs {
    fn config(&self) -> anyhow::Result<AgentConfig> {
        let flags = vec![
            ("master".into(), self.master.clone()),
            ("ip".into(), self.ip.clone()),
            ("port".into(), self.port.to_string()),
            ("work_dir".into(), self.work_dir.display().to_string()),
            ("resources".into(), self.resources.clone().unwrap_or_default()),
            ("attributes".into(), self.attributes.clone().unwrap_or_default()),
            ("isolation".into(), self.isolation.clone().unwrap_or_default()),
            ("cgroups_root".into(), self.cgroups_root.clone()),
            ("switch_user".into(), self.switch_user.to_string()),
            ("docker_registry".into(), self.docker_registry.clone().unwrap_or_default()),
            (
                "docker_store_dir".into(),
                self.docker_store_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
            ),
            ("image_provisioner_backend".into(), self.image_provisioner_backend.clone().unwrap_or_default()),
        ];
        Ok(AgentConfig {
            master: self.master.clone(),
            ip: self.ip.clone(),
            port: self.port,
            hostname: self.hostname.clone(),
            work_dir: self.work_dir.clone(),
            resources: self.resources.clone(),
            attributes: self.attributes.clone(),
            executor_registration_timeout: self.executor_registration_timeout,
            executor_shutdown_grace_period: self.executor_shutdown_grace_period,
            status_update_retry_interval: self.status_update_retry_interval,
            registration_backoff_factor: self.registration_backoff_factor,
            executor_path: std::env::current_exe().context("cannot find the agora binary for the command executor")?,
            isolation: self.isolation.clone(),
            cgroups_root: self.cgroups_root.clone(),
            cgroups_enable_cfs: self.cgroups_enable_cfs,
            cgroups_pids_max: self.cgroups_pids_max,
            switch_user: self.switch_user,
            recover: if self.recover == "cleanup" {
                agora_agent::RecoverMode::Cleanup
            } else {
                agora_agent::RecoverMode::Reconnect
            },
            strict: self.strict,
            reconfiguration_policy: if self.reconfiguration_policy == "additive" {
                agora_agent::ReconfigurationPolicy::Additive
            } else {
                agora_agent::ReconfigurationPolicy::Equal
            },
            executor_reregistration_timeout: self.executor_reregistration_timeout.min(Duration::from_secs(15)),
            docker_registry: self.docker_registry.clone(),
            docker_registry_insecure: self.docker_registry_insecure.clone(),
            docker_config: self.docker_config.clone(),
            docker_store_dir: self.docker_store_dir.clone(),
            image_provisioner_backend: self.image_provisioner_backend.clone(),
            image_gc_headroom: match self.image_gc_headroom {
                Some(h) if !(0.0..1.0).contains(&h) => anyhow::bail!("--image-gc-headroom must be in [0, 1)"),
                h => h,
            },
            image_gc_max_store_bytes: self.image_gc_max_store_bytes,
            image_gc_excluded: self.image_gc_excluded.clone(),
            ports: agora_agent::ports::PortsConfig {
                watch_interval: self.container_ports_watch_interval.max(Duration::from_millis(100)),
                check_agent_port_range_only: self.check_agent_port_range_only,
                enforce: self.enforce_container_ports,
            },
            cni: agora_agent::network::CniConfig {
                config_dir: self.network_cni_config_dir.clone(),
                plugins_dir: self.network_cni_plugins_dir.clone(),
                root_netns: self.network_cni_root_netns.clone(),
                ..agora_agent::network::CniConfig::default()
            },
            volumes: agora_agent::volumes::VolumeConfig {
                allowed_host_paths: self
                    .allowed_host_paths
                    .iter()
                    .filter(|p| !p.as_os_str().is_empty())
                    .cloned()
                    .collect(),
                enforce_container_disk_quota: self.enforce_container_disk_quota,
                container_disk_watch_interval: self.container_disk_watch_interval.max(Duration::from_millis(100)),
                xfs_project_range: agora_agent::volumes::parse_project_range(&self.xfs_project_range)
                    .map_err(|e| anyhow::anyhow!("--xfs-project-range: {e}"))?,
            },
            flags,
        })
    }
}

#[derive(Args, Clone)]
struct DevArgs {
    /// Where the dev cluster keeps its state.
    #[arg(long, env = "AGORA_WORK_DIR", default_value = "/var/tmp/agora-dev")]
    work_dir: PathBuf,
    #[arg(long, env = "AGORA_IP", default_value = "127.0.0.1")]
    ip: String,
    /// Master port; the agent listens on the next one.
    #[arg(long, env = "AGORA_PORT", default_value_t = 5050)]
    port: u16,
    /// Resources of the dev agent; detected when absent.
    #[arg(long, env = "AGORA_RESOURCES")]
    resources: Option<String>,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The master: host:port, several (h1:5050,h2:5050) or etcd://h1:2379,h2:2379[/prefix].
    #[arg(long, env = "AGORA_MASTER", default_value = "127.0.0.1:5050")]
    master: String,
    #[arg(long, env = "AGORA_CPUS", default_value_t = 0.5)]
    cpus: f64,
    /// Memory in MB.
    #[arg(long, env = "AGORA_MEM", default_value_t = 64.0)]
    mem: f64,
    #[arg(long, env = "AGORA_NAME", default_value = "agora-run")]
    name: String,
    #[arg(long, env = "AGORA_ROLE", default_value = "*")]
    role: String,
    /// Do not print state changes.
    #[arg(long, short, env = "AGORA_QUIET")]
    quiet: bool,
    /// Run the task in this Docker image (the agent pulls it); without a command the
    /// image's Entrypoint/Cmd run.
    #[arg(long, env = "AGORA_IMAGE")]
    image: Option<String>,
    /// The command: one argument runs through `sh -c`, several are exec'd directly.
    #[arg(last = true, required_unless_present = "image")]
    command: Vec<String>,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// The master: host:port, several (h1:5050,h2:5050) or etcd://h1:2379,h2:2379[/prefix].
    #[arg(long, env = "AGORA_MASTER", default_value = "127.0.0.1:5050")]
    master: String,
    /// Number of frameworks.
    #[arg(long, default_value_t = 10)]
    frameworks: usize,
    /// Number of roles the frameworks are spread over.
    #[arg(long, default_value_t = 1)]
    roles: usize,
    /// Tasks in all (spread evenly over the frameworks).
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    /// Memory per task in MB.
    #[arg(long, default_value_t = 16.0)]
    mem: f64,
    /// Give up after this long.
    #[arg(long, default_value = "10mins", value_parser = parse_duration)]
    timeout: Duration,
    /// Tasks launched but not yet RUNNING at most, across the frameworks (0: no limit).
    #[arg(long, default_value_t = 20_000)]
    window: usize,
    /// Keep the frameworks (and their tasks) until Ctrl-C instead of tearing them down.
    #[arg(long)]
    hold: bool,
}

/// Accepts the Mesos spelling of flags (`--work_dir`) as an alias of `--work-dir`.
fn normalize_args(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for a in args {
        if passthrough || a == "--" {
            passthrough = true;
            out.push(a);
            continue;
        }
        if let Some(flag) = a.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.replace('_', "-"), Some(v)),
                None => (flag.replace('_', "-"), None),
            };
            out.push(match value {
                Some(v) => format!("--{name}={v}"),
                None => format!("--{name}"),
            });
        } else {
            out.push(a);
        }
    }
    out
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGORA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    // The supervisor stays single-threaded (it forks into containers): no runtime.
    if let Command::Supervisor { runtime_dir } = &cli.command {
        return std::process::ExitCode::from(agora_containerizer::supervisor::run(runtime_dir).clamp(0, 255) as u8);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agora: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("agora: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Master(args) => {
            init_tracing("info");
            // One connection per agent and framework, plus its calls.
            raise_fd_limit(200_000);
            let m = Master::start(args.config()).await?;
            println!("agora master {} listening on {}", m.id, m.addr);
            wait_for_shutdown().await;
            m.shutdown().await;
            Ok(0)
        }
        Command::Agent { list: Some(ListCommand::List(l)), .. } => list(View::Agents, l).await,
        Command::Agent { list: None, args } if args.simulate.is_some() => {
            init_tracing("warn");
            simulate(&args).await
        }
        Command::Agent { list: None, args } => {
            init_tracing("info");
            let a = match Agent::start(args.config()?).await {
                Ok(a) => a,
                Err(e @ agora_agent::AgentError::CleanedUp(_)) => {
                    println!("{e}");
                    return Ok(0);
                }
                Err(e) => return Err(e.into()),
            };
            println!("agora agent listening on {}", a.addr);
            tokio::select! {
                _ = wait_for_shutdown() => a.shutdown().await,
                reason = a.removed_by_master() => {
                    println!("the master removed this agent ({reason}); started again it registers as a new agent");
                    a.shutdown().await;
                }
            }
            Ok(0)
        }
        Command::Dev(args) => {
            init_tracing("info");
            let master = Master::start(MasterConfig {
                ip: args.ip.clone(),
                port: args.port,
                work_dir: args.work_dir.join("master"),
                flags: vec![("dev".into(), "true".into())],
                ..MasterConfig::default()
            })
            .await?;
            let agent_cfg = AgentConfig {
                master: master.addr.to_string(),
                ip: args.ip.clone(),
                port: args.port.saturating_add(1),
                work_dir: args.work_dir.join("agent"),
                resources: args.resources.clone(),
                executor_path: std::env::current_exe().context("cannot find the agora binary")?,
                flags: vec![("dev".into(), "true".into())],
                ..AgentConfig::default()
            };
            let agent = Agent::start(agent_cfg).await?;
            println!("agora dev cluster: master http://{} agent http://{}", master.addr, agent.addr);
            println!("try: agora run --master {} -- echo hello", master.addr);
            tokio::select! {
                _ = wait_for_shutdown() => {}
                reason = agent.removed_by_master() => {
                    println!("the master removed the dev agent ({reason}); stopping the dev cluster");
                }
            }
            agent.shutdown().await;
            Ok(0)
        }
        Command::Run(args) => {
            init_tracing("warn");
            let opts = agora_client::run::RunOptions {
                master: args.master,
                name: args.name,
                cpus: args.cpus,
                mem: args.mem,
                role: args.role,
                command: args.command,
                image: args.image,
                verbose: !args.quiet,
            };
            Ok(agora_client::run::run(opts).await?)
        }
        Command::Image { cmd } => {
            init_tracing("warn");
            image(cmd).await
        }
        Command::Framework { list: ListCommand::List(l) } => list(View::Frameworks, l).await,
        Command::Task { list: ListCommand::List(l) } => list(View::Tasks, l).await,
        Command::Load(args) => {
            init_tracing("warn");
            raise_fd_limit(65_536);
            let opts = agora_client::load::LoadOptions {
                master: args.master,
                frameworks: args.frameworks,
                roles: args.roles,
                tasks: args.tasks,
                cpus: args.cpus,
                mem: args.mem,
                timeout: args.timeout,
                window: args.window,
                teardown: !args.hold,
            };
            let report = agora_client::load::run(opts).await?;
            println!("{}", serde_json::to_string(&report)?);
            let ok = report.overcommit.is_empty() && report.duplicate_starts == 0 && !report.timed_out;
            if args.hold {
                wait_for_shutdown().await;
            }
            Ok(if ok { 0 } else { 1 })
        }
        Command::Supervisor { .. } => Ok(0),
        Command::Executor => {
            // The executor's log lands in the task's sandbox stderr: keep it quiet.
            init_tracing("warn");
            let config = agora_executor::Config::from_env()?;
            agora_executor::run(config).await?;
            Ok(0)
        }
    }
}

/// `agora image ...` against an agent's image API.
async fn image(cmd: ImageCommand) -> anyhow::Result<i32> {
    use agora_client::image as img;
    match cmd {
        ImageCommand::Pull { agent, if_not_present, aci, docker_archive, oci_layout, name } => {
            let req = img::PullRequest { name, aci, docker_archive, oci_layout, if_not_present };
            let i = img::pull(&agent.agent, &req).await?;
            let refs: Vec<&str> =
                i["references"].as_array().map(|a| a.iter().filter_map(|r| r.as_str()).collect()).unwrap_or_default();
            println!("{} {}", i["id"].as_str().unwrap_or(""), refs.join(" "));
            Ok(0)
        }
        ImageCommand::Ls { agent, json } => {
            let list = img::list(&agent.agent).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{}", img::table(&list));
            }
            Ok(0)
        }
        ImageCommand::Inspect { agent, name } => match img::inspect(&agent.agent, &name).await? {
            Some(i) => {
                println!("{}", serde_json::to_string_pretty(&i)?);
                Ok(0)
            }
            None => {
                eprintln!("agora: no image '{name}' on the agent");
                Ok(1)
            }
        },
        ImageCommand::Rm { agent, names } => {
            let mut code = 0;
            for n in names {
                if img::remove(&agent.agent, &n).await? {
                    println!("removed {n}");
                } else {
                    eprintln!("agora: no image '{n}' on the agent");
                    code = 1;
                }
            }
            Ok(code)
        }
    }
}

/// `agora agent --simulate N`: N simulated agents against the master (see
/// `agora_agent::simulate`); prints counters as JSON lines until stopped.
async fn simulate(args: &AgentArgs) -> anyhow::Result<i32> {
    let count = args.simulate.unwrap_or(0);
    let resources = agora_api::Resources::parse(
        args.resources.as_deref().unwrap_or("cpus:24;mem:4096;disk:4096;ports:[31000-32000]"),
    )?;
    let attributes = match &args.attributes {
        Some(a) => agora_api::Attribute::parse_list(a).map_err(|e| anyhow::anyhow!("--attributes: {e}"))?,
        None => vec![],
    };
    let task_duration = match args.simulate_task_duration.as_str() {
        "never" => None,
        d => Some(parse_duration(d).map_err(|e| anyhow::anyhow!("--simulate-task-duration: {e}"))?),
    };
    let need = (count as u64).saturating_mul(3).saturating_add(1024);
    raise_fd_limit(need);
    // One source address per 10,000 agents: each has its own ephemeral port range.
    let local_ips: Vec<std::net::IpAddr> = if args.master.starts_with("127.") || args.master.starts_with("localhost") {
        (0..count.div_ceil(10_000).max(1))
            .map(|i| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)))
            .collect()
    } else {
        vec![]
    };
    let config = agora_agent::simulate::SimConfig {
        master: args.master.clone(),
        count,
        resources,
        attributes,
        task_duration,
        name: args.simulate_name.clone().unwrap_or_else(|| format!("sim-{}", std::process::id())),
        ramp: args.simulate_ramp,
        status_update_retry_interval: args.status_update_retry_interval,
        local_ips,
        agents_per_connection: args.simulate_agents_per_connection,
        completed_tasks: args.simulate_completed_tasks,
    };
    let sim = agora_agent::simulate::start(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("agora: simulating {count} agents against {}", args.master);
    let stats = sim.stats.clone();
    let mut tick = tokio::time::interval(args.simulate_report_interval.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = wait_for_shutdown() => break,
            _ = tick.tick() => println!("{}", stats.snapshot()),
        }
    }
    sim.stop();
    println!("{}", stats.snapshot());
    Ok(0)
}

/// Raises the open-files limit towards `want` (as root also the hard limit): the master
/// and simulations hold one connection per agent.
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft >= want {
        return;
    }
    let nr_open =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(hard);
    let target = want.min(nr_open.max(hard));
    if setrlimit(Resource::RLIMIT_NOFILE, target, target.max(hard)).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn list(view: View, l: ListArgs) -> anyhow::Result<i32> {
    let out = agora_client::views::show(&l.master, view, l.json).await?;
    println!("{out}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_flags_are_aliases() {
        let v = normalize_args(
            ["agora", "agent", "--work_dir=/x", "--max_agent_ping_timeouts", "3", "--", "--keep_me"]
                .iter()
                .map(|s| s.to_string()),
        );
        assert_eq!(v, vec!["agora", "agent", "--work-dir=/x", "--max-agent-ping-timeouts", "3", "--", "--keep_me"]);
    }

    #[test]
    fn cli_parses() {
        Cli::try_parse_from(["agora", "agent", "list", "--json"]).unwrap();
        Cli::try_parse_from(["agora", "agent", "--master", "h:1", "--resources", "cpus:1"]).unwrap();
        Cli::try_parse_from(["agora", "run", "--", "sh", "-c", "echo hi"]).unwrap();
        assert!(Cli::try_parse_from(["agora", "master", "--allocation-interval", "nope"]).is_err());
        let cli = Cli::try_parse_from(["agora", "master", "--weights", "web=2,batch=0.5"]).unwrap();
        let Command::Master(m) = cli.command else { panic!("not master") };
        assert_eq!(m.config().weights, vec![("web".to_string(), 2.0), ("batch".to_string(), 0.5)]);
        assert!(Cli::try_parse_from(["agora", "master", "--weights", "web=-1"]).is_err());
        let cli = Cli::try_parse_from([
            "agora",
            "master",
            "--etcd",
            "http://127.0.0.1:2379,127.0.0.1:2381",
            "--etcd-lease-ttl",
            "500ms",
            "--agent-reregister-timeout",
            "5secs",
        ])
        .unwrap();
        let Command::Master(m) = cli.command else { panic!("not master") };
        let c = m.config();
        let etcd = c.etcd.expect("etcd config");
        assert_eq!(etcd.endpoints, vec!["http://127.0.0.1:2379", "http://127.0.0.1:2381"]);
        assert_eq!(etcd.prefix, "/agora");
        assert_eq!(etcd.lease_ttl, Duration::from_secs(2), "etcd leases are whole seconds, at least 2");
        assert_eq!(c.agent_reregister_timeout, Duration::from_secs(5));
        assert!(Cli::try_parse_from(["agora", "master", "--etcd", "https://x:1"]).is_err());
    }
}
