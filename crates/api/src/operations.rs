//! Offer operations that change what an agent has rather than use it: RESERVE and
//! UNRESERVE (dynamic reservations), CREATE and DESTROY (persistent volumes). Each one is a
//! [`Conversion`] of some resources into the same amounts with other metadata; applying it
//! to a collection checks the collection holds what is converted.
use crate::resources::{Resource, Resources};

/// `from` becomes `to` (same amounts, new reservations or volume metadata).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversion {
    pub from: Resources,
    pub to: Resources,
}

impl Conversion {
    /// Applies the conversion to `res`; `Err` (and `res` unchanged) when it does not hold
    /// everything converted.
    pub fn apply(&self, res: &mut Resources) -> Result<(), String> {
        if !res.contains(&self.from) {
            return Err(format!("{} is not available (have {res})", self.from));
        }
        res.subtract_all(&self.from);
        res.add_all(&self.to);
        Ok(())
    }
}

fn check(r: &Resource) -> Result<(), String> {
    r.validate().map_err(|e| e.to_string())
}

/// RESERVE: each resource names its new reservation last (`{type: DYNAMIC, role,
/// principal?}`). `role`: the role the reservation must be for (the offer's), if any;
/// `principal`: the caller's, which a reservation's principal must match when set.
pub fn reserve(resources: &[Resource], role: Option<&str>, principal: Option<&str>) -> Result<Conversion, String> {
    if resources.is_empty() {
        return Err("RESERVE names no resources".into());
    }
    let mut c = Conversion::default();
    for r in resources {
        check(r)?;
        let Some(res) = r.dynamic_reservation() else {
            return Err(format!(
                "resource {r} has no dynamic reservation to make (want reservations[-1].type DYNAMIC)"
            ));
        };
        let Some(for_role) = res.role.as_deref().filter(|x| !x.is_empty() && *x != "*") else {
            return Err(format!("the reservation of {r} names no role"));
        };
        if let Some(want) = role {
            if for_role != want && !for_role.starts_with(&format!("{want}/")) {
                return Err(format!("resource {r} is reserved for role '{for_role}', not the offer's role '{want}'"));
            }
        }
        if let (Some(p), Some(caller)) = (res.principal.as_deref(), principal) {
            if p != caller {
                return Err(format!("the reservation's principal '{p}' is not the caller's '{caller}'"));
            }
        }
        if r.persistence_id().is_some() {
            return Err(format!("cannot reserve a persistent volume ({r})"));
        }
        let mut base = r.clone();
        base.reservations.pop();
        base.role = None;
        c.from.add(&base);
        c.to.add(r);
    }
    Ok(c)
}

/// UNRESERVE: each resource is dynamically reserved (and not a persistent volume).
pub fn unreserve(resources: &[Resource]) -> Result<Conversion, String> {
    if resources.is_empty() {
        return Err("UNRESERVE names no resources".into());
    }
    let mut c = Conversion::default();
    for r in resources {
        check(r)?;
        if r.dynamic_reservation().is_none() {
            return Err(format!("resource {r} is not dynamically reserved"));
        }
        if r.persistence_id().is_some() {
            return Err(format!("resource {r} is a persistent volume: DESTROY it before unreserving"));
        }
        let mut base = r.clone();
        base.reservations.pop();
        base.role = None;
        c.from.add(r);
        c.to.add(&base);
    }
    Ok(c)
}

/// CREATE: each volume is reserved `disk` with `disk.persistence.id` and `disk.volume`
/// (`container_path`, `mode`). `existing`: the volume ids the agent has already.
pub fn create(volumes: &[Resource], existing: &[String]) -> Result<Conversion, String> {
    if volumes.is_empty() {
        return Err("CREATE names no volumes".into());
    }
    let mut c = Conversion::default();
    let mut ids: Vec<&str> = Vec::new();
    for v in volumes {
        check(v)?;
        if v.name != "disk" {
            return Err(format!("a persistent volume must be 'disk', not '{}'", v.name));
        }
        let Some(id) = v.persistence_id() else {
            return Err(format!("volume {v} has no disk.persistence.id"));
        };
        if !valid_volume_id(id) {
            return Err(format!("persistence id '{id}' must be letters, digits, '.', '-' or '_' (not '.' or '..')"));
        }
        if ids.contains(&id) || existing.iter().any(|e| e == id) {
            return Err(format!("persistent volume '{id}' already exists on this agent"));
        }
        ids.push(id);
        let Some((path, _)) = v.volume_mount() else {
            return Err(format!("volume '{id}' needs disk.volume with container_path and mode"));
        };
        if path.is_empty() {
            return Err(format!("volume '{id}' needs a non-empty container_path"));
        }
        if !v.is_reserved() {
            return Err(format!("volume '{id}' must be made of reserved disk (RESERVE it first)"));
        }
        c.from.add(&v.without_volume());
        c.to.add(v);
    }
    Ok(c)
}

/// DESTROY: each volume is a persistent volume; its disk stays reserved.
pub fn destroy(volumes: &[Resource]) -> Result<Conversion, String> {
    if volumes.is_empty() {
        return Err("DESTROY names no volumes".into());
    }
    let mut c = Conversion::default();
    for v in volumes {
        check(v)?;
        if v.persistence_id().is_none() {
            return Err(format!("resource {v} is not a persistent volume"));
        }
        c.from.add(v);
        c.to.add(&v.without_volume());
    }
    Ok(c)
}

/// Persistence ids become directory names on the agent.
pub fn valid_volume_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The resources an agent checkpoints (dynamic reservations, persistent volumes).
pub fn checkpointed(total: &Resources) -> Resources {
    Resources(total.iter().filter(|r| r.is_checkpointed()).cloned().collect())
}

/// An agent's total: its `--resources` with the checkpointed changes made on them.
pub fn with_checkpointed(base: &Resources, checkpointed: &Resources) -> Result<Resources, String> {
    let mut total = base.clone();
    for r in checkpointed.iter() {
        let from = r.base_form();
        if !total.contains_one(&from) {
            return Err(format!("checkpointed resource {r} is not in the agent's resources {total}"));
        }
        total.subtract(&from);
        total.add(r);
    }
    Ok(total)
}

/// The resources an agent was started with, from a total with checkpointed changes in it.
pub fn base(total: &Resources) -> Resources {
    let mut base = total.clone();
    for r in checkpointed(total).iter() {
        base.subtract(r);
        base.add(&r.base_form());
    }
    base
}

/// Whether two collections hold the same resources.
pub fn same(a: &Resources, b: &Resources) -> bool {
    a.contains(b) && b.contains(a)
}

/// The ids of the persistent volumes in `res`.
pub fn volume_ids(res: &Resources) -> Vec<String> {
    res.iter().filter_map(|r| r.persistence_id().map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ReservationInfo, ReservationType};

    fn dynamic(mut r: Resource, role: &str) -> Resource {
        r.reservations.push(ReservationInfo {
            kind: Some(ReservationType::Dynamic),
            role: Some(role.into()),
            principal: Some("ops".into()),
            labels: None,
        });
        r
    }

    fn volume(r: Resource, id: &str) -> Resource {
        let mut v = r;
        v.disk = Some(Box::new(serde_json::json!({
            "persistence": {"id": id, "principal": "ops"},
            "volume": {"container_path": "data", "mode": "RW"}})));
        v
    }

    #[test]
    fn reserve_create_destroy_unreserve_round_trip() {
        let mut total = Resources::parse("cpus:4;mem:1024;disk:1000").unwrap();
        let original = total.clone();
        let rdisk = dynamic(Resource::scalar("disk", 200.0), "db");
        let rcpu = dynamic(Resource::scalar("cpus", 1.0), "db");
        reserve(&[rdisk.clone(), rcpu.clone()], Some("db"), Some("ops")).unwrap().apply(&mut total).unwrap();
        assert_eq!(total.scalar("disk"), 1000.0);
        assert!(total.iter().any(|r| r.name == "disk" && r.reservation_role() == "db"));
        let vol = volume(rdisk.clone(), "pg");
        create(std::slice::from_ref(&vol), &volume_ids(&total)).unwrap().apply(&mut total).unwrap();
        assert_eq!(volume_ids(&total), ["pg"]);
        // Twice: refused, by id.
        let e = create(std::slice::from_ref(&vol), &volume_ids(&total)).unwrap_err();
        assert!(e.contains("already exists"), "{e}");
        // The checkpoint rebuilds the total from the flags' resources.
        assert_eq!(with_checkpointed(&original, &checkpointed(&total)).unwrap(), total);
        // A volume cannot be unreserved before it is destroyed.
        assert!(unreserve(std::slice::from_ref(&vol)).unwrap_err().contains("DESTROY"));
        destroy(&[vol]).unwrap().apply(&mut total).unwrap();
        assert!(volume_ids(&total).is_empty());
        unreserve(&[rdisk, rcpu]).unwrap().apply(&mut total).unwrap();
        assert_eq!(total, original);
    }

    #[test]
    fn bad_operations_change_nothing() {
        let mut total = Resources::parse("cpus:4;mem:1024;disk:1000").unwrap();
        let before = total.clone();
        // More than there is.
        let big = dynamic(Resource::scalar("cpus", 8.0), "db");
        let c = reserve(&[big], Some("db"), None).unwrap();
        assert!(c.apply(&mut total).is_err());
        assert_eq!(total, before);
        // The wrong role, the wrong principal, no reservation at all.
        assert!(reserve(&[dynamic(Resource::scalar("cpus", 1.0), "web")], Some("db"), None).is_err());
        assert!(reserve(&[dynamic(Resource::scalar("cpus", 1.0), "db")], Some("db"), Some("eve")).is_err());
        assert!(reserve(&[Resource::scalar("cpus", 1.0)], Some("db"), None).is_err());
        // A volume on unreserved disk, a bad id, no volume info.
        assert!(create(&[volume(Resource::scalar("disk", 10.0), "v")], &[]).unwrap_err().contains("reserved"));
        assert!(create(&[volume(dynamic(Resource::scalar("disk", 10.0), "db"), "../x")], &[]).is_err());
        let mut novol = dynamic(Resource::scalar("disk", 10.0), "db");
        novol.disk = Some(Box::new(serde_json::json!({"persistence": {"id": "v"}})));
        assert!(create(&[novol], &[]).unwrap_err().contains("disk.volume"));
        // Unreserving what is not reserved.
        assert!(unreserve(&[Resource::scalar("cpus", 1.0)]).is_err());
    }

    #[test]
    fn static_and_dynamic_reservations_stay_apart() {
        let mut total = Resources::parse("cpus(db):2;cpus:2").unwrap();
        let d = dynamic(Resource::scalar("cpus", 1.0), "db");
        reserve(std::slice::from_ref(&d), Some("db"), None).unwrap().apply(&mut total).unwrap();
        // 2 static + 1 dynamic for db, 1 unreserved: unreserving 2 dynamic is refused.
        let two = dynamic(Resource::scalar("cpus", 2.0), "db");
        assert!(unreserve(&[two]).unwrap().apply(&mut total).is_err());
        unreserve(&[d]).unwrap().apply(&mut total).unwrap();
        assert_eq!(total, Resources::parse("cpus(db):2;cpus:2").unwrap());
    }
}
