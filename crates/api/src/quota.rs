//! Quota (Mesos `quota.proto`, v1 operator calls GET_QUOTA, UPDATE_QUOTA and the deprecated
//! SET_QUOTA / REMOVE_QUOTA): per role, guaranteed and maximum amounts of scalar resources.
use crate::resources::{Resource, Scalar};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The resources quota applies to (Agora's allocator accounts for these four).
pub const QUOTA_RESOURCES: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

/// A role's quota (`QuotaConfig`): no guarantee and no limit when a map is empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaConfig {
    pub role: String,
    #[serde(default)]
    pub guarantees: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub limits: BTreeMap<String, Scalar>,
}

impl QuotaConfig {
    /// Whether this is the default quota (nothing guaranteed, nothing limited): setting it
    /// removes the role's quota.
    pub fn is_default(&self) -> bool {
        self.guarantees.is_empty() && self.limits.is_empty()
    }

    /// Checks the config on its own: a named role other than `*`, known scalar names,
    /// finite non-negative amounts, and no guarantee above its limit.
    pub fn validate(&self) -> Result<(), String> {
        if self.role.is_empty() || self.role == "*" {
            return Err(format!("Invalid quota config: role '{}' cannot have quota", self.role));
        }
        for (what, map) in [("guarantees", &self.guarantees), ("limits", &self.limits)] {
            for (name, v) in map {
                if !QUOTA_RESOURCES.contains(&name.as_str()) {
                    return Err(format!(
                        "Invalid quota config for role '{}': {what} name '{name}' is not one of {}",
                        self.role,
                        QUOTA_RESOURCES.join(", ")
                    ));
                }
                if !(v.value.is_finite() && v.value >= 0.0) {
                    return Err(format!(
                        "Invalid quota config for role '{}': {what} of '{name}' must be a non-negative number, got {}",
                        self.role, v.value
                    ));
                }
            }
        }
        for (name, g) in &self.guarantees {
            if let Some(l) = self.limits.get(name).filter(|l| g.value > l.value) {
                return Err(format!(
                    "Invalid quota config for role '{}': guarantee of '{name}' ({}) is above its limit ({})",
                    self.role, g.value, l.value
                ));
            }
        }
        Ok(())
    }

    /// Amounts by name, for the allocator.
    pub fn guarantees_map(&self) -> BTreeMap<String, f64> {
        self.guarantees.iter().map(|(k, v)| (k.clone(), v.value)).collect()
    }

    pub fn limits_map(&self) -> BTreeMap<String, f64> {
        self.limits.iter().map(|(k, v)| (k.clone(), v.value)).collect()
    }
}

/// `UPDATE_QUOTA`: applied all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateQuota {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub quota_configs: Vec<QuotaConfig>,
}

/// `SET_QUOTA` (deprecated): the guarantee is also the limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SetQuota {
    pub quota_request: QuotaRequest,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaRequest {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub guarantee: Vec<Resource>,
}

/// `REMOVE_QUOTA` (deprecated).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoveQuota {
    pub role: String,
}

/// The old form of a role's quota: its guarantee as resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaInfo {
    pub role: String,
    #[serde(default)]
    pub guarantee: Vec<Resource>,
}

/// `GET_QUOTA`'s `status`, and the v0 `/quota` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaStatus {
    #[serde(default)]
    pub infos: Vec<QuotaInfo>,
    #[serde(default)]
    pub configs: Vec<QuotaConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetQuota {
    pub status: QuotaStatus,
}

impl QuotaStatus {
    pub fn of<'a>(configs: impl IntoIterator<Item = &'a QuotaConfig>) -> QuotaStatus {
        let configs: Vec<QuotaConfig> = configs.into_iter().cloned().collect();
        let infos = configs
            .iter()
            .filter(|c| !c.guarantees.is_empty())
            .map(|c| QuotaInfo {
                role: c.role.clone(),
                guarantee: c.guarantees.iter().map(|(name, v)| Resource::scalar(name, v.value)).collect(),
            })
            .collect();
        QuotaStatus { infos, configs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> QuotaConfig {
        serde_json::from_str(json).expect("a quota config")
    }

    #[test]
    fn configs_parse_as_mesos_writes_them_and_are_validated() {
        let c = config(r#"{"role":"dev","guarantees":{"cpus":{"value":2}},"limits":{"cpus":{"value":"4"}}}"#);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.limits_map().get("cpus"), Some(&4.0));
        assert!(config(r#"{"role":"*","limits":{"cpus":{"value":1}}}"#).validate().is_err());
        assert!(config(r#"{"role":"dev","limits":{"ports":{"value":1}}}"#).validate().is_err());
        assert!(config(r#"{"role":"dev","limits":{"cpus":{"value":-1}}}"#).validate().is_err());
        let above = config(r#"{"role":"dev","guarantees":{"mem":{"value":10}},"limits":{"mem":{"value":5}}}"#);
        assert!(above.validate().unwrap_err().contains("above its limit"));
        assert!(config(r#"{"role":"dev"}"#).is_default());
    }

    #[test]
    fn status_lists_guarantees_in_the_old_form_too() {
        let c = config(r#"{"role":"dev","guarantees":{"cpus":{"value":2}}}"#);
        let s = serde_json::to_value(QuotaStatus::of([&c])).expect("json");
        assert_eq!(s["infos"][0]["guarantee"][0]["name"], "cpus");
        assert_eq!(s["infos"][0]["guarantee"][0]["scalar"]["value"], 2.0);
        assert_eq!(s["configs"][0]["guarantees"]["cpus"]["value"], 2.0);
    }
}
