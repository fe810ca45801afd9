//! Hand-written JSON for the message a master writes by the hundred thousand: `Task`, with
//! its statuses and resources (`/master/state`, GET_STATE and GET_TASKS are mostly tasks).
//!
//! The output is byte for byte what the derived `Serialize` writes through `serde_json`
//! (tested below on tasks that set every field, and on strings that need escaping). It is
//! faster because keys are written as literals rather than escaped one by one, and a string
//! is copied whole once a scan finds nothing to escape. Fields that are rare in a task
//! (labels, container, health check, ...) are written by serde. Every struct is taken apart
//! without `..`, so a field added to one of them does not compile until it is written here.
use crate::json::Bytes;
use crate::resources::{AllocationInfo, Range, Ranges, Resource, Scalar, ValueType};
use crate::{Source, Task, TaskStatus};
use base64::Engine as _;
use serde::Serialize;

/// Appends `task` as JSON, exactly as `serde_json::to_writer(out, task)` would.
pub fn task(out: &mut Vec<u8>, task: &Task) -> Result<(), serde_json::Error> {
    let Task {
        name,
        task_id,
        framework_id,
        executor_id,
        agent_id,
        state,
        resources,
        statuses,
        status_update_state,
        status_update_uuid,
        labels,
        discovery,
        container,
        health_check,
        kill_policy,
        user,
        limits,
    } = task;
    out.extend_from_slice(b"{\"name\":");
    string(out, name);
    out.extend_from_slice(b",\"task_id\":");
    id(out, &task_id.value);
    out.extend_from_slice(b",\"framework_id\":");
    id(out, &framework_id.value);
    if let Some(e) = executor_id {
        out.extend_from_slice(b",\"executor_id\":");
        id(out, &e.value);
    }
    out.extend_from_slice(b",\"agent_id\":");
    id(out, &agent_id.value);
    out.extend_from_slice(b",\"state\":");
    string(out, state.name());
    if !resources.is_empty() {
        out.extend_from_slice(b",\"resources\":[");
        for (i, r) in resources.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            resource(out, r)?;
        }
        out.push(b']');
    }
    if !statuses.is_empty() {
        out.extend_from_slice(b",\"statuses\":[");
        for (i, s) in statuses.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            status(out, s)?;
        }
        out.push(b']');
    }
    if let Some(s) = status_update_state {
        out.extend_from_slice(b",\"status_update_state\":");
        string(out, s.name());
    }
    if let Some(u) = status_update_uuid {
        out.extend_from_slice(b",\"status_update_uuid\":");
        base64(out, u);
    }
    opt_serde(out, b",\"labels\":", labels)?;
    opt_serde(out, b",\"discovery\":", discovery)?;
    opt_serde(out, b",\"container\":", container)?;
    opt_serde(out, b",\"health_check\":", health_check)?;
    opt_serde(out, b",\"kill_policy\":", kill_policy)?;
    if let Some(u) = user {
        out.extend_from_slice(b",\"user\":");
        string(out, u);
    }
    opt_serde(out, b",\"limits\":", limits)?;
    out.push(b'}');
    Ok(())
}

/// Appends a `TaskStatus` as JSON, exactly as serde would.
pub fn status(out: &mut Vec<u8>, status: &TaskStatus) -> Result<(), serde_json::Error> {
    let TaskStatus {
        task_id,
        state,
        message,
        source,
        reason,
        data,
        agent_id,
        executor_id,
        timestamp,
        uuid,
        healthy,
        check_status,
        labels,
        container_status,
        unreachable_time,
        limitation,
    } = status;
    out.extend_from_slice(b"{\"task_id\":");
    id(out, &task_id.value);
    out.extend_from_slice(b",\"state\":");
    string(out, state.name());
    if let Some(m) = message {
        out.extend_from_slice(b",\"message\":");
        string(out, m);
    }
    if let Some(s) = source {
        out.extend_from_slice(b",\"source\":");
        string(
            out,
            match s {
                Source::Master => "SOURCE_MASTER",
                Source::Agent => "SOURCE_AGENT",
                Source::Executor => "SOURCE_EXECUTOR",
            },
        );
    }
    opt_serde(out, b",\"reason\":", reason)?;
    if let Some(d) = data {
        out.extend_from_slice(b",\"data\":");
        base64(out, d);
    }
    if let Some(a) = agent_id {
        out.extend_from_slice(b",\"agent_id\":");
        id(out, &a.value);
    }
    if let Some(e) = executor_id {
        out.extend_from_slice(b",\"executor_id\":");
        id(out, &e.value);
    }
    if let Some(t) = timestamp {
        out.extend_from_slice(b",\"timestamp\":");
        serde_json::to_writer(&mut *out, t)?;
    }
    if let Some(u) = uuid {
        out.extend_from_slice(b",\"uuid\":");
        base64(out, u);
    }
    if let Some(h) = healthy {
        out.extend_from_slice(if *h { b",\"healthy\":true" } else { b",\"healthy\":false" });
    }
    opt_serde(out, b",\"check_status\":", check_status)?;
    opt_serde(out, b",\"labels\":", labels)?;
    opt_serde(out, b",\"container_status\":", container_status)?;
    opt_serde(out, b",\"unreachable_time\":", unreachable_time)?;
    opt_serde(out, b",\"limitation\":", limitation)?;
    out.push(b'}');
    Ok(())
}

/// Appends a `Resource` as JSON, exactly as serde would.
pub fn resource(out: &mut Vec<u8>, r: &Resource) -> Result<(), serde_json::Error> {
    let Resource {
        name,
        kind,
        scalar,
        ranges,
        set,
        role,
        allocation_info,
        reservation,
        reservations,
        disk,
        revocable,
        shared,
        provider_id,
    } = r;
    out.extend_from_slice(b"{\"name\":");
    string(out, name);
    out.extend_from_slice(match kind {
        ValueType::Scalar => b",\"type\":\"SCALAR\"",
        ValueType::Ranges => b",\"type\":\"RANGES\"",
        ValueType::Set => b",\"type\":\"SET\"",
        ValueType::Text => b",\"type\":\"TEXT\"",
    });
    if let Some(Scalar { value }) = scalar {
        out.extend_from_slice(b",\"scalar\":{\"value\":");
        if value.is_infinite() {
            string(out, if *value > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            serde_json::to_writer(&mut *out, value)?;
        }
        out.push(b'}');
    }
    if let Some(Ranges { range }) = ranges {
        out.extend_from_slice(b",\"ranges\":{\"range\":[");
        for (i, Range { begin, end }) in range.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"begin\":");
            serde_json::to_writer(&mut *out, begin)?;
            out.extend_from_slice(b",\"end\":");
            serde_json::to_writer(&mut *out, end)?;
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    }
    opt_serde(out, b",\"set\":", set)?;
    if let Some(role) = role {
        out.extend_from_slice(b",\"role\":");
        string(out, role);
    }
    if let Some(AllocationInfo { role }) = allocation_info {
        out.extend_from_slice(b",\"allocation_info\":{");
        if let Some(role) = role {
            out.extend_from_slice(b"\"role\":");
            string(out, role);
        }
        out.push(b'}');
    }
    opt_serde(out, b",\"reservation\":", reservation)?;
    if !reservations.is_empty() {
        out.extend_from_slice(b",\"reservations\":");
        serde_json::to_writer(&mut *out, reservations)?;
    }
    opt_serde(out, b",\"disk\":", disk)?;
    opt_serde(out, b",\"revocable\":", revocable)?;
    opt_serde(out, b",\"shared\":", shared)?;
    opt_serde(out, b",\"provider_id\":", provider_id)?;
    out.push(b'}');
    Ok(())
}

/// Appends a JSON string. Most strings (ids, names, roles) need no escaping: they are
/// copied whole after one scan; the others go through serde_json's escaping.
pub fn string(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `&str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether any byte is a control character, `"` or `\\`: eight bytes at a time (a byte
/// test per character was most of the time spent writing a task).
fn needs_escape(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Each is exact as a test of "some byte of w": below n, or zero.
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH != 0;
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH != 0;
    let word = |w: u64| below(w, 0x20) || zero(w ^ (ONES * u64::from(b'"'))) || zero(w ^ (ONES * u64::from(b'\\')));
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        if word(u64::from_le_bytes(w)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// `{"value":"..."}`: every id type.
fn id(out: &mut Vec<u8>, v: &str) {
    out.extend_from_slice(b"{\"value\":");
    string(out, v);
    out.push(b'}');
}

/// `bytes` as a base64 string (its alphabet never needs escaping).
fn base64(out: &mut Vec<u8>, b: &Bytes) {
    let start = out.len();
    let n = base64::encoded_len(b.0.len(), true).unwrap_or(0);
    out.reserve(n + 2);
    out.push(b'"');
    out.resize(start + 1 + n, 0);
    match base64::engine::general_purpose::STANDARD.encode_slice(&b.0, &mut out[start + 1..]) {
        Ok(_) => out.push(b'"'),
        Err(_) => {
            out.truncate(start);
            string(out, &base64::engine::general_purpose::STANDARD.encode(&b.0));
        }
    }
}

/// A rare optional field: its key, then its value through serde.
fn opt_serde<T: Serialize>(out: &mut Vec<u8>, key: &[u8], v: &Option<T>) -> Result<(), serde_json::Error> {
    if let Some(v) = v {
        out.extend_from_slice(key);
        serde_json::to_writer(&mut *out, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_serde(t: &Task) {
        let want = serde_json::to_vec(t).unwrap();
        let mut got = Vec::new();
        task(&mut got, t).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    }

    fn full_task() -> Task {
        serde_json::from_value(serde_json::json!({
            "name": "web \"1\"\n\u{1}é\\",
            "task_id": {"value": "t-1"},
            "framework_id": {"value": "f\tx"},
            "executor_id": {"value": "e"},
            "agent_id": {"value": "a"},
            "state": "TASK_KILLING",
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}, "role": "*",
                 "allocation_info": {"role": "web/prod"}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": "Infinity"}, "allocation_info": {}},
                {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 31005}, {"begin": 1, "end": 2}]}},
                {"name": "ports", "type": "RANGES", "ranges": {"range": []}},
                {"name": "zones", "type": "SET", "set": {"item": ["a", "b"]}},
                {"name": "disk", "type": "SCALAR", "scalar": {"value": 1e21},
                 "reservation": {"principal": "p"},
                 "reservations": [{"type": "DYNAMIC", "role": "r", "principal": "p", "labels": {"labels": []}}],
                 "disk": {"persistence": {"id": "v"}, "volume": {"mode": "RW", "container_path": "d"}},
                 "revocable": {}, "shared": {}, "provider_id": {"value": "p"}},
            ],
            "statuses": [
                {"task_id": {"value": "t-1"}, "state": "TASK_RUNNING", "message": "m\u{7f}\"",
                 "source": "SOURCE_AGENT", "reason": "REASON_CONTAINER_LIMITATION", "data": "AAEC",
                 "agent_id": {"value": "a"}, "executor_id": {"value": "e"}, "timestamp": 1796371489.8718488,
                 "uuid": "yIDWBsqoTz2aza3TctFvow==", "healthy": false,
                 "check_status": {"type": "COMMAND"}, "labels": {"labels": [{"key": "k", "value": "v"}]},
                 "container_status": {"network_infos": []}, "unreachable_time": {"nanoseconds": 5},
                 "limitation": {"resources": []}},
                {"task_id": {"value": "t-1"}, "state": "TASK_STAGING", "source": "SOURCE_MASTER", "healthy": true,
                 "timestamp": 0.5},
                {"task_id": {"value": "t-1"}, "state": "TASK_STARTING", "source": "SOURCE_EXECUTOR", "data": ""},
            ],
            "status_update_state": "TASK_RUNNING",
            "status_update_uuid": "AA==",
            "labels": {"labels": [{"key": "k"}]},
            "discovery": {"visibility": "FRAMEWORK", "name": "n"},
            "container": {"type": "MESOS"},
            "health_check": {"type": "HTTP"},
            "kill_policy": {"grace_period": {"nanoseconds": 3}},
            "user": "root",
            "limits": {"cpus": 1.5},
        }))
        .unwrap()
    }

    #[test]
    fn a_task_with_every_field_is_written_as_serde_writes_it() {
        let t = full_task();
        // The fixture does set every field (an unknown enum name would be dropped).
        let s = &t.statuses[0];
        assert!(s.message.is_some() && s.source.is_some() && s.reason.is_some() && s.data.is_some());
        assert!(s.agent_id.is_some() && s.executor_id.is_some() && s.timestamp.is_some() && s.uuid.is_some());
        assert!(s.healthy.is_some() && s.check_status.is_some() && s.labels.is_some());
        assert!(s.container_status.is_some() && s.unreachable_time.is_some() && s.limitation.is_some());
        assert!(t.executor_id.is_some() && t.status_update_state.is_some() && t.status_update_uuid.is_some());
        assert!(t.labels.is_some() && t.discovery.is_some() && t.container.is_some() && t.health_check.is_some());
        assert!(t.kill_policy.is_some() && t.user.is_some() && t.limits.is_some());
        let r = &t.resources[5];
        assert!(r.reservation.is_some() && !r.reservations.is_empty() && r.disk.is_some());
        assert!(r.revocable.is_some() && r.shared.is_some() && r.provider_id.is_some());
        assert!(t.resources[0].role.is_some() && t.resources[4].set.is_some());
        same_as_serde(&t);
    }

    #[test]
    fn a_minimal_task_is_written_as_serde_writes_it() {
        let mut t = full_task();
        t.executor_id = None;
        t.resources.clear();
        t.statuses.clear();
        t.status_update_state = None;
        t.status_update_uuid = None;
        t.labels = None;
        t.discovery = None;
        t.container = None;
        t.health_check = None;
        t.kill_policy = None;
        t.user = None;
        t.limits = None;
        same_as_serde(&t);
    }

    #[test]
    fn odd_values_are_written_as_serde_writes_them() {
        let mut t = full_task();
        t.resources[0].scalar = Some(Scalar { value: f64::NAN });
        t.resources[1].scalar = Some(Scalar { value: f64::NEG_INFINITY });
        t.resources[2].allocation_info = Some(AllocationInfo { role: None });
        t.statuses[0].timestamp = Some(f64::INFINITY);
        t.statuses[1].timestamp = Some(-0.0);
        t.statuses[2].uuid = Some(Bytes((0..=255).collect()));
        same_as_serde(&t);
        for s in ["", "\u{0}", "\u{1f}", " ", "\"", "\\", "/", "\u{2028}", "日本", "a\u{7f}b"] {
            let mut got = Vec::new();
            string(&mut got, s);
            assert_eq!(got, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn state_names_are_serde_names() {
        use crate::TaskState::*;
        for s in [
            Staging,
            Starting,
            Running,
            Killing,
            Finished,
            Failed,
            Killed,
            Error,
            Lost,
            Dropped,
            Unreachable,
            Gone,
            GoneByOperator,
            Unknown,
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.name()));
        }
    }

    #[test]
    fn the_escape_scan_finds_every_byte_that_needs_escaping_at_every_position() {
        for len in 0..20 {
            for pos in 0..len {
                for b in 0u8..=255 {
                    let mut v = vec![b'a'; len];
                    v[pos] = b;
                    // Neighbours that stress the borrow: 0x80+ and 0x20.
                    if pos > 0 {
                        v[pos - 1] = 0xff;
                    }
                    if pos + 1 < len {
                        v[pos + 1] = 0x20;
                    }
                    let want = v.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(needs_escape(&v), want, "{v:?}");
                }
            }
        }
    }
}
