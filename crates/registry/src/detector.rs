//! Finding the leading master, for agents and clients. `--master` takes one of:
//!
//! * `host:port` — one master, used as it is;
//! * `h1:5050,h2:5050,h3:5050` — several masters: each is asked `GET /master/redirect` in
//!   turn (the last leader first); the first 307 names the leader (a leader redirects to
//!   itself, a follower to the leader; 503 means it knows of none);
//! * `etcd://h1:2379,h2:2379[/prefix]` — the leader key in etcd (prefix `/agora` by
//!   default) holds the leader's MasterInfo.
use crate::etcd::{parse_endpoints, EtcdClient};
use agora_api::MasterInfo;
use agora_http::http::StatusCode;
use agora_http::Client;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub const DEFAULT_PREFIX: &str = "/agora";

enum Spec {
    Hosts(Vec<String>),
    Etcd { client: EtcdClient, key: Vec<u8> },
}

pub struct Detector {
    spec: Spec,
    http: Client,
    last: Mutex<Option<String>>,
    timeout: Duration,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.spec {
            Spec::Hosts(h) => write!(f, "Detector({})", h.join(",")),
            Spec::Etcd { client, key } => {
                write!(f, "Detector(etcd {:?} {})", client.endpoints(), String::from_utf8_lossy(key))
            }
        }
    }
}

/// `host:port` out of a `Location` header: `//host:port/path`, `http://host:port`, or
/// `host:port`.
pub fn location_hostport(loc: &str) -> Option<String> {
    let rest = loc.strip_prefix("http:").or_else(|| loc.strip_prefix("https:")).unwrap_or(loc);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let hp = rest.split(['/', '?']).next().unwrap_or("");
    (!hp.is_empty() && hp.contains(':')).then(|| hp.to_string())
}

impl Detector {
    /// Parses a `--master` value (see the module docs).
    pub fn new(master: &str) -> Result<Detector, String> {
        let m = master.trim();
        let spec = if let Some(rest) = m.strip_prefix("etcd://") {
            let (hosts, prefix) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, DEFAULT_PREFIX),
            };
            let prefix = if prefix.trim_end_matches('/').is_empty() { DEFAULT_PREFIX } else { prefix };
            let endpoints = parse_endpoints(hosts).map_err(|e| e.to_string())?;
            Spec::Etcd { client: EtcdClient::new(endpoints, Duration::from_secs(1)), key: crate::leader_key(prefix) }
        } else {
            let hosts: Vec<String> = m
                .split(',')
                .map(|h| h.trim().trim_start_matches("http://").trim_end_matches('/').to_string())
                .filter(|h| !h.is_empty())
                .collect();
            if hosts.is_empty() || hosts.iter().any(|h| h.contains('/') || h.contains("://")) {
                return Err(format!(
                    "invalid --master '{master}': expected host:port[,host:port...] or etcd://host:port,...[/prefix]"
                ));
            }
            Spec::Hosts(hosts)
        };
        Ok(Detector { spec, http: Client::new(), last: Mutex::new(None), timeout: Duration::from_secs(2) })
    }

    /// The one master when exactly one was given (nothing to detect).
    pub fn single(&self) -> Option<&str> {
        match &self.spec {
            Spec::Hosts(h) if h.len() == 1 => Some(&h[0]),
            _ => None,
        }
    }

    /// Whether the leader can move (several masters or etcd), so it is worth looking again
    /// soon when it cannot be reached.
    pub fn is_ha(&self) -> bool {
        self.single().is_none()
    }

    /// Records the leader (found through a redirect, say).
    pub fn remember(&self, leader: &str) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(leader.to_string());
        }
    }

    /// Forgets the last leader (it could not be reached): the next look starts afresh.
    pub fn forget(&self) {
        if let Ok(mut l) = self.last.lock() {
            *l = None;
        }
    }

    /// The last leader found, without looking (the single master when one was given).
    pub fn current(&self) -> Option<String> {
        let last = self.last.lock().ok().and_then(|l| l.clone());
        last.or_else(|| self.single().map(str::to_string))
    }

    /// The leading master's `host:port`, or `None` when none can be found right now. With a
    /// single master given, that master (or where it last redirected to).
    pub async fn leader(&self) -> Option<String> {
        let found = match &self.spec {
            Spec::Hosts(h) if h.len() == 1 => return Some(self.current().unwrap_or_else(|| h[0].clone())),
            Spec::Hosts(hosts) => {
                let last = self.last.lock().ok().and_then(|l| l.clone());
                let mut order: Vec<&String> = Vec::with_capacity(hosts.len() + 1);
                if let Some(l) = &last {
                    if let Some(h) = hosts.iter().find(|h| *h == l) {
                        order.push(h);
                    }
                }
                order.extend(hosts.iter().filter(|h| Some(*h) != last.as_ref()));
                let mut found = None;
                for h in order {
                    if let Some(l) = self.ask(h).await {
                        found = Some(l);
                        break;
                    }
                }
                found
            }
            Spec::Etcd { client, key } => match client.get(key, Instant::now() + self.timeout).await {
                Ok(Some(kv)) => match serde_json::from_slice::<MasterInfo>(&kv.value) {
                    Ok(info) => Some(crate::master_addr(&info)),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable leader key in etcd");
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the leader from etcd");
                    None
                }
            },
        };
        if let Some(l) = &found {
            self.remember(l);
        }
        found
    }

    /// Asks one master (`host:port`) who leads.
    pub async fn ask(&self, host: &str) -> Option<String> {
        let url = format!("http://{host}/master/redirect");
        match self.http.get(&url, self.timeout).await {
            Ok(r) if r.status == StatusCode::TEMPORARY_REDIRECT => r
                .headers
                .get(agora_http::http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(location_hostport),
            Ok(r) => {
                tracing::debug!(%host, status = %r.status, "master knows no leader");
                None
            }
            Err(e) => {
                tracing::debug!(%host, error = %e, "master unreachable");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(location_hostport("//h:5050"), Some("h:5050".into()));
        assert_eq!(location_hostport("//h:5050/api/v1/scheduler?x=1"), Some("h:5050".into()));
        assert_eq!(location_hostport("http://h:1/x"), Some("h:1".into()));
        assert_eq!(location_hostport("h:2"), Some("h:2".into()));
        assert_eq!(location_hostport("//"), None);
    }

    #[test]
    fn master_specs() {
        assert_eq!(Detector::new("a:1").expect("one").single(), Some("a:1"));
        assert_eq!(Detector::new("http://a:1/").expect("url").single(), Some("a:1"));
        assert!(Detector::new("a:1,b:2").expect("two").single().is_none());
        let d = Detector::new("etcd://127.0.0.1:2379,127.0.0.1:2381/mine").expect("etcd");
        match &d.spec {
            Spec::Etcd { key, client } => {
                assert_eq!(key, b"/mine/leader");
                assert_eq!(client.endpoints().len(), 2);
            }
            Spec::Hosts(_) => panic!("not etcd"),
        }
        match &Detector::new("etcd://127.0.0.1:2379").expect("etcd").spec {
            Spec::Etcd { key, .. } => assert_eq!(key, b"/agora/leader"),
            Spec::Hosts(_) => panic!("not etcd"),
        }
        assert!(Detector::new("").is_err());
        assert!(Detector::new("zk://x:1/mesos").is_err());
        assert!(Detector::new("etcd://").is_err());
    }
}
