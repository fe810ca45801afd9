//! The operator views: `agora agent list`, `framework list`, `task list`, from the master's
//! v1 operator API, as a table or as JSON.
use agora_api::operator::{Call, CallType, Response};
use agora_api::Resources;
use agora_http::ClientError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Agents,
    Frameworks,
    Tasks,
}

/// Asks the master and renders the view.
pub async fn show(master: &str, view: View, json: bool) -> Result<String, ClientError> {
    let kind = match view {
        View::Agents => CallType::GetAgents,
        View::Frameworks => CallType::GetFrameworks,
        View::Tasks => CallType::GetTasks,
    };
    let (url, reply) =
        crate::call_leader(master, "/api/v1", &Call { kind, ..Default::default() }).await.map_err(|e| match e {
            crate::SchedulerError::Http(e) => e,
            e => ClientError::Request { url: master.to_string(), why: e.to_string() },
        })?;
    let resp: Response = serde_json::from_slice(&reply.body)
        .map_err(|e| ClientError::Stream { url: url.clone(), why: format!("bad operator response: {e}") })?;
    if json {
        let v = match view {
            View::Agents => serde_json::to_value(&resp.get_agents),
            View::Frameworks => serde_json::to_value(&resp.get_frameworks),
            View::Tasks => serde_json::to_value(&resp.get_tasks),
        };
        return Ok(serde_json::to_string_pretty(&v.unwrap_or_default()).unwrap_or_default());
    }
    Ok(render(view, &resp))
}

fn scalars(r: &Resources) -> String {
    format!("cpus={} mem={} disk={}", r.scalar("cpus"), r.scalar("mem"), r.scalar("disk"))
}

/// Renders a table with aligned columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:w$}  ", c, w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

pub fn render(view: View, resp: &Response) -> String {
    match view {
        View::Agents => {
            let rows = resp
                .get_agents
                .as_ref()
                .map(|g| {
                    g.agents
                        .iter()
                        .map(|a| {
                            vec![
                                a.agent_info.id.as_ref().map(|i| i.value.to_string()).unwrap_or_default(),
                                format!("{}:{}", a.agent_info.hostname, a.agent_info.port),
                                if a.active { "active".into() } else { "inactive".into() },
                                scalars(&Resources::from_vec(a.total_resources.clone())),
                                scalars(&Resources::from_vec(a.allocated_resources.clone())),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["ID", "ADDRESS", "STATE", "TOTAL", "USED"], rows)
        }
        View::Frameworks => {
            let rows = resp
                .get_frameworks
                .as_ref()
                .map(|g| {
                    g.frameworks
                        .iter()
                        .map(|f| (f, "active"))
                        .chain(g.completed_frameworks.iter().map(|f| (f, "completed")))
                        .map(|(f, kind)| {
                            vec![
                                f.framework_info.id.as_ref().map(|i| i.value.to_string()).unwrap_or_default(),
                                f.framework_info.name.clone(),
                                f.framework_info.effective_roles().join(","),
                                if kind == "completed" {
                                    "completed".into()
                                } else if f.connected {
                                    "connected".into()
                                } else {
                                    "disconnected".into()
                                },
                                scalars(&Resources::from_vec(f.allocated_resources.clone())),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["ID", "NAME", "ROLES", "STATE", "USED"], rows)
        }
        View::Tasks => {
            let rows = resp
                .get_tasks
                .as_ref()
                .map(|g| {
                    g.tasks
                        .iter()
                        .chain(g.unreachable_tasks.iter())
                        .chain(g.completed_tasks.iter())
                        .map(|t| {
                            vec![
                                t.task_id.value.to_string(),
                                t.name.clone(),
                                t.state.name().to_string(),
                                t.framework_id.value.to_string(),
                                t.agent_id.value.to_string(),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["ID", "NAME", "STATE", "FRAMEWORK", "AGENT"], rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], vec![vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
