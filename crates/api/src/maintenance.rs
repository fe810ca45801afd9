//! Maintenance (Mesos `maintenance.proto` and the v1 operator calls
//! UPDATE_MAINTENANCE_SCHEDULE, GET_MAINTENANCE_SCHEDULE, GET_MAINTENANCE_STATUS,
//! START_MAINTENANCE, STOP_MAINTENANCE): operators schedule windows in which machines will
//! be unavailable; a scheduled machine is DRAINING (its offers carry `unavailability`), a
//! machine whose maintenance started is DOWN (its agents are shut down and kept out) until
//! maintenance stops and it is UP again.
use crate::mesos::{DurationInfo, TimeInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A machine, by hostname and/or IP (`MachineID`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MachineId {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

impl MachineId {
    /// Whether an agent with this hostname and IP runs on the machine: every field the
    /// machine id names must match.
    pub fn matches(&self, hostname: &str, ip: &str) -> bool {
        (self.hostname.is_some() || self.ip.is_some())
            && self.hostname.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(hostname))
            && self.ip.as_deref().is_none_or(|i| i == ip)
    }
}

impl std::fmt::Display for MachineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.hostname.as_deref().unwrap_or(""), self.ip.as_deref().unwrap_or(""))
    }
}

/// When a machine is unavailable: from `start`, for `duration` (forever when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Unavailability {
    pub start: TimeInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    #[serde(default)]
    pub machine_ids: Vec<MachineId>,
    pub unavailability: Unavailability,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    #[serde(default)]
    pub windows: Vec<Window>,
}

impl Schedule {
    /// Every machine of the schedule.
    pub fn machines(&self) -> BTreeSet<&MachineId> {
        self.windows.iter().flat_map(|w| &w.machine_ids).collect()
    }

    /// The unavailability of a machine, if it is scheduled.
    pub fn unavailability_of(&self, hostname: &str, ip: &str) -> Option<(&MachineId, Unavailability)> {
        self.windows
            .iter()
            .find_map(|w| w.machine_ids.iter().find(|m| m.matches(hostname, ip)).map(|m| (m, w.unavailability)))
    }

    /// Checks a schedule on its own: machine ids name a hostname or an IP, no machine is in
    /// two windows, durations are not negative.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for w in &self.windows {
            if w.machine_ids.is_empty() {
                return Err("Invalid maintenance schedule: a window lists no machines".into());
            }
            if w.unavailability.duration.is_some_and(|d| d.nanoseconds < 0) {
                return Err("Invalid maintenance schedule: a window has a negative duration".into());
            }
            for m in &w.machine_ids {
                if m.hostname.as_deref().unwrap_or("").is_empty() && m.ip.as_deref().unwrap_or("").is_empty() {
                    return Err("Invalid maintenance schedule: a machine id needs a hostname or an IP".into());
                }
                if let Some(ip) = &m.ip {
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        return Err(format!("Invalid maintenance schedule: '{ip}' is not an IP address"));
                    }
                }
                if !seen.insert(m) {
                    return Err(format!("Invalid maintenance schedule: machine {m} is in more than one window"));
                }
            }
        }
        Ok(())
    }
}

/// `UPDATE_MAINTENANCE_SCHEDULE`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateSchedule {
    pub schedule: Schedule,
}

/// `START_MAINTENANCE` / `STOP_MAINTENANCE`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machines {
    #[serde(default)]
    pub machines: Vec<MachineId>,
}

/// A draining machine and the answers of frameworks to its inverse offers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainingMachine {
    pub id: MachineId,
    #[serde(default)]
    pub statuses: Vec<serde_json::Value>,
}

/// `GET_MAINTENANCE_STATUS`'s `status` (`maintenance.ClusterStatus`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    #[serde(default)]
    pub draining_machines: Vec<DrainingMachine>,
    #[serde(default)]
    pub down_machines: Vec<MachineId>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetStatus {
    pub status: ClusterStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetSchedule {
    pub schedule: Schedule,
}

/// What the master keeps (and its registry records): the schedule and the machines whose
/// maintenance has started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceState {
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub down: BTreeSet<MachineId>,
}

impl MaintenanceState {
    pub fn is_empty(&self) -> bool {
        self.schedule.windows.is_empty() && self.down.is_empty()
    }

    /// Whether an agent with this hostname and IP is on a DOWN machine.
    pub fn is_down(&self, hostname: &str, ip: &str) -> bool {
        self.down.iter().any(|m| m.matches(hostname, ip))
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            draining_machines: self
                .schedule
                .machines()
                .into_iter()
                .filter(|m| !self.down.contains(*m))
                .map(|m| DrainingMachine { id: m.clone(), statuses: Vec::new() })
                .collect(),
            down_machines: self.down.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(json: &str) -> Schedule {
        serde_json::from_str(json).expect("a schedule")
    }

    #[test]
    fn schedules_parse_as_mesos_writes_them_and_are_validated() {
        let s = schedule(
            r#"{"windows":[{"machine_ids":[{"hostname":"h1","ip":"10.0.0.1"},{"hostname":"h2"}],
                "unavailability":{"start":{"nanoseconds":"1000"},"duration":{"nanoseconds":3600000000000}}}]}"#,
        );
        assert_eq!(s.validate(), Ok(()));
        let (m, u) = s.unavailability_of("H1", "10.0.0.1").expect("h1 scheduled");
        assert_eq!(m.hostname.as_deref(), Some("h1"));
        assert_eq!(u.start.nanoseconds, 1000);
        assert!(s.unavailability_of("h1", "10.0.0.9").is_none(), "the ip must match too");
        assert!(s.unavailability_of("h2", "10.0.0.9").is_some(), "no ip given: any");
        let twice = schedule(
            r#"{"windows":[{"machine_ids":[{"hostname":"h1"}],"unavailability":{"start":{"nanoseconds":0}}},
                {"machine_ids":[{"hostname":"h1"}],"unavailability":{"start":{"nanoseconds":5}}}]}"#,
        );
        assert!(twice.validate().unwrap_err().contains("more than one window"));
        let empty_id = schedule(r#"{"windows":[{"machine_ids":[{}],"unavailability":{"start":{"nanoseconds":0}}}]}"#);
        assert!(empty_id.validate().is_err());
        let bad_ip =
            schedule(r#"{"windows":[{"machine_ids":[{"ip":"nope"}],"unavailability":{"start":{"nanoseconds":0}}}]}"#);
        assert!(bad_ip.validate().is_err());
    }

    #[test]
    fn status_splits_draining_from_down() {
        let mut m = MaintenanceState {
            schedule: schedule(
                r#"{"windows":[{"machine_ids":[{"hostname":"a"},{"hostname":"b"}],"unavailability":{"start":{"nanoseconds":0}}}]}"#,
            ),
            down: BTreeSet::new(),
        };
        m.down.insert(MachineId { hostname: Some("b".into()), ip: None });
        let s = m.status();
        assert_eq!(s.draining_machines.len(), 1);
        assert_eq!(s.draining_machines[0].id.hostname.as_deref(), Some("a"));
        assert_eq!(s.down_machines.len(), 1);
        assert!(m.is_down("b", "1.2.3.4") && !m.is_down("a", "1.2.3.4"));
    }
}
