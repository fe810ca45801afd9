//! Cluster policy set by operators and kept in the registry: quotas, maintenance, and the
//! pruning of old unreachable and gone agents from the registry.
use super::*;
use agora_api::maintenance::{MachineId, Schedule, Unavailability};
use agora_api::quota::{QuotaConfig, QuotaStatus, QUOTA_RESOURCES};
use agora_api::resources::Scalar;

/// Why an agent is removed when its machine goes down.
const MACHINE_DOWN: &str = "Agent's machine is down for maintenance";

/// What maintenance matches an agent by: its hostname, and its IP when the hostname is one.
pub(crate) fn machine_of(info: &AgentInfo) -> (&str, &str) {
    let ip = if info.hostname.parse::<std::net::IpAddr>().is_ok() { info.hostname.as_str() } else { "" };
    (info.hostname.as_str(), ip)
}

impl State {
    // ------------------------------------------------------------------ quota

    pub(super) fn get_quota(&self) -> agora_api::quota::GetQuota {
        agora_api::quota::GetQuota { status: QuotaStatus::of(self.quotas.values()) }
    }

    /// UPDATE_QUOTA: all or nothing. Without `force`, the guarantees of all roles together
    /// must fit in the cluster's current total.
    pub(super) fn update_quota(&mut self, configs: Vec<QuotaConfig>, force: bool) -> Result<(), ApiError> {
        let mut seen = HashSet::new();
        for c in &configs {
            validate_role(&c.role).map_err(|e| ApiError::bad_request(format!("Invalid quota config: {e}")))?;
            c.validate().map_err(ApiError::bad_request)?;
            if !seen.insert(c.role.as_str()) {
                return Err(ApiError::bad_request(format!("Invalid quota: role '{}' appears more than once", c.role)));
            }
        }
        let mut next = self.quotas.clone();
        for c in &configs {
            if c.is_default() {
                next.remove(&c.role);
            } else {
                next.insert(c.role.clone(), c.clone());
            }
        }
        if !force {
            let total = self.agents.values().fold(Resources::new(), |mut t, a| {
                t.add_all(&a.total);
                t
            });
            for name in QUOTA_RESOURCES {
                let guaranteed: f64 = next.values().filter_map(|c| c.guarantees.get(name)).map(|s| s.value).sum();
                let have = total.scalar(name);
                if guaranteed > have + 1e-9 {
                    return Err(ApiError::bad_request(format!(
                        "Invalid quota: the total guarantees of '{name}' ({guaranteed}) exceed the cluster's \
                         total ({have}); use 'force' to set them anyway"
                    )));
                }
            }
        }
        for c in &configs {
            self.allocator
                .set_quota(&c.role, &agora_allocator::Quota { guarantees: c.guarantees_map(), limits: c.limits_map() });
        }
        self.quotas = next;
        self.full_allocation = true;
        self.submit(vec![Op::SetQuotas { quotas: self.quotas.clone() }], Ack::None);
        tracing::info!(roles = configs.len(), "quota updated");
        Ok(())
    }

    /// SET_QUOTA (deprecated): the guarantee is also the limit; the role must have none yet.
    pub(super) fn set_quota(&mut self, req: agora_api::quota::QuotaRequest) -> Result<(), ApiError> {
        if self.quotas.contains_key(&req.role) {
            return Err(ApiError::bad_request(format!(
                "Failed to validate set quota request: quota cannot be set for role '{}' which already has quota",
                req.role
            )));
        }
        let mut config = QuotaConfig { role: req.role.clone(), ..Default::default() };
        for r in &req.guarantee {
            let value = r.scalar.as_ref().map(|s| s.value).ok_or_else(|| {
                ApiError::bad_request(format!("Invalid quota request: '{}' is not a scalar resource", r.name))
            })?;
            if r.is_reserved() {
                return Err(ApiError::bad_request("Invalid quota request: quota cannot hold reserved resources"));
            }
            let e = config.guarantees.entry(r.name.to_string()).or_insert(Scalar { value: 0.0 });
            e.value += value;
        }
        if config.guarantees.is_empty() {
            return Err(ApiError::bad_request("Invalid quota request: the guarantee is empty"));
        }
        config.limits = config.guarantees.clone();
        self.update_quota(vec![config], req.force)
    }

    /// REMOVE_QUOTA (deprecated).
    pub(super) fn remove_quota(&mut self, role: &str) -> Result<(), ApiError> {
        if !self.quotas.contains_key(role) {
            return Err(ApiError::bad_request(format!(
                "Failed to validate remove quota request: there is no quota for role '{role}'"
            )));
        }
        self.update_quota(vec![QuotaConfig { role: role.into(), ..Default::default() }], true)
    }

    /// Hands the registry's quotas to the allocator (after an election).
    pub(super) fn recover_quotas(&mut self, quotas: BTreeMap<String, QuotaConfig>) {
        for c in quotas.values() {
            let q = agora_allocator::Quota { guarantees: c.guarantees_map(), limits: c.limits_map() };
            self.allocator.set_quota(&c.role, &q);
        }
        self.quotas = quotas;
    }

    // ------------------------------------------------------------ maintenance

    /// The unavailability of an agent's machine, for its offers.
    pub(super) fn unavailability_of(&self, info: &AgentInfo) -> Option<Unavailability> {
        if self.maintenance.schedule.windows.is_empty() {
            return None;
        }
        let (hostname, ip) = machine_of(info);
        self.maintenance.schedule.unavailability_of(hostname, ip).map(|(_, u)| u)
    }

    /// Refuses an agent whose machine is down for maintenance.
    pub(super) fn check_machine_up(&self, info: &AgentInfo) -> Result<(), ApiError> {
        let (hostname, ip) = machine_of(info);
        if self.maintenance.is_down(hostname, ip) {
            return Err(ApiError::forbidden(format!("{MACHINE_DOWN}: {hostname}")));
        }
        Ok(())
    }

    /// UPDATE_MAINTENANCE_SCHEDULE: replaces the schedule. Machines that are down stay in
    /// it; offers of agents whose unavailability changed are rescinded and made again.
    pub(super) fn update_schedule(&mut self, schedule: Schedule) -> Result<(), ApiError> {
        schedule.validate().map_err(ApiError::bad_request)?;
        let scheduled = schedule.machines();
        if let Some(m) = self.maintenance.down.iter().find(|m| !scheduled.contains(m)) {
            return Err(ApiError::bad_request(format!(
                "Invalid maintenance schedule: machine {m} is down and must stay in the schedule until its \
                 maintenance is stopped"
            )));
        }
        let old = std::mem::replace(&mut self.maintenance.schedule, schedule);
        let changed: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                let (h, ip) = machine_of(&a.info);
                old.unavailability_of(h, ip).map(|x| x.1)
                    != self.maintenance.schedule.unavailability_of(h, ip).map(|x| x.1)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in changed {
            let offers: Vec<OfferId> =
                self.agents.get(&id).map(|a| a.offers.iter().cloned().collect()).unwrap_or_default();
            for o in offers {
                self.rescind_offer(&o, true);
            }
            self.dirty_agents.insert(id);
        }
        self.submit(vec![Op::SetMaintenance { maintenance: self.maintenance.clone() }], Ack::None);
        tracing::info!(windows = self.maintenance.schedule.windows.len(), "maintenance schedule updated");
        Ok(())
    }

    /// START_MAINTENANCE: the machines (scheduled, not yet down) go DOWN: their agents are
    /// shut down and removed (tasks GONE, or LOST for frameworks that are not partition
    /// aware) and may not register until maintenance stops.
    pub(super) fn start_maintenance(&mut self, machines: Vec<MachineId>) -> Result<(), ApiError> {
        if machines.is_empty() {
            return Err(ApiError::bad_request("Expecting at least one machine"));
        }
        let scheduled = self.maintenance.schedule.machines();
        for m in &machines {
            if !scheduled.contains(m) {
                return Err(ApiError::bad_request(format!("Machine {m} is not scheduled for maintenance")));
            }
            if self.maintenance.down.contains(m) {
                return Err(ApiError::bad_request(format!("Machine {m} is already down")));
            }
        }
        let on_machines: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                let (h, ip) = machine_of(&a.info);
                machines.iter().any(|m| m.matches(h, ip))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &on_machines {
            if let Some(a) = self.agents.get_mut(id) {
                a.send(&MasterToAgent::Shutdown { message: MACHINE_DOWN.into() });
            }
            self.remove_agent(id, TaskState::Gone, Reason::ReasonAgentRemoved, MACHINE_DOWN);
            tracing::warn!(agent_id = %id, "agent removed: its machine is down for maintenance");
        }
        let recovered: Vec<AgentId> = self
            .recovered_agents
            .iter()
            .filter(|(_, r)| {
                let (h, ip) = machine_of(&r.info);
                machines.iter().any(|m| m.matches(h, ip))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in recovered {
            self.recovered_agents.remove(&id);
            self.submit(vec![Op::RemoveAgent { agent_id: id.value.into() }], Ack::None);
        }
        self.maintenance.down.extend(machines);
        self.submit(vec![Op::SetMaintenance { maintenance: self.maintenance.clone() }], Ack::None);
        Ok(())
    }

    /// STOP_MAINTENANCE: the machines (down) are UP again and leave the schedule.
    pub(super) fn stop_maintenance(&mut self, machines: Vec<MachineId>) -> Result<(), ApiError> {
        if machines.is_empty() {
            return Err(ApiError::bad_request("Expecting at least one machine"));
        }
        if let Some(m) = machines.iter().find(|m| !self.maintenance.down.contains(*m)) {
            return Err(ApiError::bad_request(format!("Machine {m} is not down for maintenance")));
        }
        for m in &machines {
            self.maintenance.down.remove(m);
        }
        for w in &mut self.maintenance.schedule.windows {
            w.machine_ids.retain(|m| !machines.contains(m));
        }
        self.maintenance.schedule.windows.retain(|w| !w.machine_ids.is_empty());
        self.submit(vec![Op::SetMaintenance { maintenance: self.maintenance.clone() }], Ack::None);
        Ok(())
    }

    // ------------------------------------------------------------ registry gc

    /// Forgets unreachable and gone agents older than `--registry-max-agent-age`, and the
    /// oldest beyond `--registry-max-agent-count`, in the registry and here. Tasks still
    /// listed as unreachable on a forgotten agent move to the completed tasks.
    pub(super) fn prune_registry(&mut self) {
        let now = now_secs();
        let max_age = self.config.registry_max_agent_age.as_secs_f64();
        let mut entries: Vec<(f64, AgentId)> = self
            .unreachable_agents
            .iter()
            .map(|(id, u)| (u.time, id.clone()))
            .chain(self.gone_agents.iter().map(|(id, t)| (*t, id.clone())))
            .collect();
        entries.sort_by(|a, b| a.0.total_cmp(&b.0));
        let excess = entries.len().saturating_sub(self.config.registry_max_agent_count);
        let forget: Vec<AgentId> = entries
            .into_iter()
            .enumerate()
            .filter(|(i, (time, _))| *i < excess || now - time > max_age)
            .map(|(_, (_, id))| id)
            .collect();
        if forget.is_empty() {
            return;
        }
        for id in &forget {
            self.gone_agents.remove(id);
            if let Some(u) = self.unreachable_agents.remove(id) {
                for (fid, tid) in u.tasks {
                    let Some(fw) = self.frameworks.get_mut(&fid) else { continue };
                    if let Some(t) = fw.unreachable_tasks.remove(&tid) {
                        fw.completed_tasks.push_back(std::sync::Arc::new(std::sync::Arc::unwrap_or_clone(t).task));
                    }
                }
            }
        }
        tracing::info!(agents = forget.len(), "pruned old unreachable and gone agents from the registry");
        self.submit(
            vec![Op::ForgetAgents { agent_ids: forget.into_iter().map(|id| id.value.into()).collect() }],
            Ack::None,
        );
    }
}

/// Runs the registry gc now and then.
pub(super) fn gc_interval(config: &MasterConfig) -> Duration {
    config.registry_gc_interval.max(Duration::from_millis(100))
}
