//! Offer operations that change an agent's resources: dynamic reservations (RESERVE,
//! UNRESERVE) and persistent volumes (CREATE, DESTROY), through ACCEPT and through the
//! operator API. Each is a [`Conversion`] applied, in this order, to the accepted offer (or
//! the agent's unallocated resources), the allocator, the agent's total in the master and
//! the registry; the agent is then told its checkpointed resources.
use super::*;
use agora_api::operations::{self as ops, Conversion};

/// Reads `field` of an operation's payload as a list of resources.
fn resources_of(v: Option<&serde_json::Value>, field: &str, what: &str) -> Result<Vec<Resource>, String> {
    let list = v.and_then(|v| v.get(field)).ok_or_else(|| format!("Expecting '{what}.{field}' to be present"))?;
    serde_json::from_value(list.clone()).map_err(|e| format!("'{what}.{field}' is not a list of resources: {e}"))
}

impl State {
    /// One RESERVE / UNRESERVE / CREATE / DESTROY of an ACCEPT, on the resources left of
    /// the accepted offers (`remaining`, allocated to `role`). On error nothing changes.
    pub(super) fn accept_operation(
        &mut self,
        fid: &FrameworkId,
        agent_id: &AgentId,
        role: &str,
        op: &sched::Operation,
        remaining: &mut Resources,
    ) -> Result<(), String> {
        use sched::OperationType as K;
        let principal = self.frameworks.get(fid).and_then(|f| f.info.principal.clone());
        let existing = self.agents.get(agent_id).map(|a| ops::volume_ids(&a.total)).unwrap_or_default();
        let conv = match op.kind {
            K::Reserve => ops::reserve(
                &resources_of(op.reserve.as_ref(), "resources", "reserve")?,
                Some(role),
                principal.as_deref(),
            )?,
            K::Unreserve => ops::unreserve(&resources_of(op.unreserve.as_ref(), "resources", "unreserve")?)?,
            K::Create => ops::create(&resources_of(op.create.as_ref(), "volumes", "create")?, &existing)?,
            K::Destroy => ops::destroy(&resources_of(op.destroy.as_ref(), "volumes", "destroy")?)?,
            other => return Err(format!("offer operation {other:?} is not supported")),
        };
        // Offered resources carry the offer's allocation role; so must the converted ones.
        let conv = Conversion { from: with_role(&conv.from, role)?, to: with_role(&conv.to, role)? };
        let mut left = remaining.clone();
        conv.apply(&mut left).map_err(|e| format!("the offers do not hold what the operation converts: {e}"))?;
        self.convert_on_agent(agent_id, Some(fid), &conv).map_err(|e| e.message)?;
        *remaining = left;
        Ok(())
    }

    /// Applies a conversion on an agent: the allocator (what `holder` holds there, or the
    /// unallocated resources), the agent's total, the registry, and the agent itself.
    fn convert_on_agent(
        &mut self,
        agent_id: &AgentId,
        holder: Option<&FrameworkId>,
        conv: &Conversion,
    ) -> Result<(), ApiError> {
        let Some(a) = self.agents.get(agent_id) else {
            return Err(ApiError::bad_request(format!("Agent {agent_id} is not registered")));
        };
        let plain = Conversion { from: conv.from.allocated_to(None), to: conv.to.allocated_to(None) };
        let mut total = a.total.clone();
        plain.apply(&mut total).map_err(|e| conflict(format!("Agent {agent_id}: {e}")))?;
        if !self.allocator.convert(agent_id, holder, &conv.from, &conv.to) {
            return Err(conflict(format!(
                "Agent {agent_id} does not have {} unallocated (in use or offered)",
                plain.from
            )));
        }
        let Some(a) = self.agents.get_mut(agent_id) else { return Ok(()) };
        a.total = total;
        std::sync::Arc::make_mut(&mut a.info).resources = a.total.clone().into_vec();
        let record = AgentRecord { info: (*a.info).clone(), pid: a.pid.clone(), version: a.version.clone() };
        let checkpointed = ops::checkpointed(&a.total).into_vec();
        a.send(&MasterToAgent::CheckpointResources { resources: checkpointed });
        tracing::info!(agent_id = %agent_id, from = %plain.from, to = %plain.to, "agent resources converted");
        self.submit(vec![Op::AdmitAgent { agent: record }], Ack::None);
        self.dirty_agents.insert(agent_id.clone());
        Ok(())
    }

    /// A re-registering agent's report with the master's reservations and volumes in it,
    /// where they differ (the agent missed a CheckpointResources while disconnected): the
    /// master's record wins, as in Mesos, and the agent is told it once readmitted.
    pub(super) fn with_known_reservations(&mut self, id: &AgentId, mut info: AgentInfo) -> AgentInfo {
        let known = match (self.agents.get(id), self.recovered_agents.get(id)) {
            (Some(a), _) => a.total.clone(),
            (None, Some(r)) => Resources::from_vec(r.info.resources.clone()),
            (None, None) => return info,
        };
        let reported = Resources::from_vec(info.resources.clone());
        let (mine, theirs) = (ops::checkpointed(&known), ops::checkpointed(&reported));
        if ops::same(&mine, &theirs) {
            return info;
        }
        match ops::with_checkpointed(&ops::base(&reported), &mine) {
            Ok(total) => {
                tracing::warn!(agent_id = %id, master = %mine, agent = %theirs,
                    "the agent's reservations and volumes differ from the master's; the master's are sent to it");
                info.resources = total.into_vec();
                self.resend_checkpoint.insert(id.clone(), mine.into_vec());
            }
            Err(e) => {
                tracing::error!(agent_id = %id, error = %e, "the master's reservations no longer fit the agent; its own are kept")
            }
        }
        info
    }

    /// RESERVE_RESOURCES, UNRESERVE_RESOURCES, CREATE_VOLUMES, DESTROY_VOLUMES: on the
    /// agent's unallocated resources; offers outstanding on the agent are rescinded first
    /// when what is asked for is not free otherwise. 409 when it still is not.
    pub(super) fn operator_conversion(
        &mut self,
        agent_id: &AgentId,
        make: impl FnOnce(&[String]) -> Result<Conversion, String>,
    ) -> Result<(), ApiError> {
        let Some(a) = self.agents.get(agent_id) else {
            return Err(ApiError::bad_request(format!("Agent {agent_id} is not registered")));
        };
        let conv = make(&ops::volume_ids(&a.total)).map_err(ApiError::bad_request)?;
        let conv = Conversion { from: conv.from.allocated_to(None), to: conv.to.allocated_to(None) };
        if self.convert_on_agent(agent_id, None, &conv).is_ok() {
            return Ok(());
        }
        let offers: Vec<OfferId> =
            self.agents.get(agent_id).map(|a| a.offers.iter().cloned().collect()).unwrap_or_default();
        for oid in offers {
            self.rescind_offer(&oid, true);
        }
        self.convert_on_agent(agent_id, None, &conv)
    }
}

/// A 409 Conflict: the resources exist but are not free, or not there at all.
fn conflict(m: String) -> ApiError {
    ApiError { status: StatusCode::CONFLICT, message: m }
}

/// Sets the allocation role where it is missing; refuses another role.
fn with_role(res: &Resources, role: &str) -> Result<Resources, String> {
    let mut out = Resources::new();
    for r in res.iter() {
        match r.allocation_role() {
            Some(x) if x != role => {
                return Err(format!("resource {r} is allocated to role '{x}' but the offer is for role '{role}'"))
            }
            _ => out.add(&r.clone().with_allocation(Some(role))),
        }
    }
    Ok(out)
}
