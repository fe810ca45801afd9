//! Wrapped identifiers: `{"value": "..."}` on the wire.
//!
//! An id's text is a [`Text`]: immutable and shared, so that the copies a master keeps of
//! one framework or agent id (in every task, status and index of it) are one allocation,
//! and cloning an id costs a reference count instead of a copy.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

/// Immutable, shared text: an id's value. Compares, hashes and orders as the `str` it
/// holds, and derefs to it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Text(Arc<str>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` share one allocation (not only equal text).
    pub fn shares(&self, other: &Text) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for Text {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(self.as_str())
    }
}

impl AsRef<std::ffi::OsStr> for Text {
    fn as_ref(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(self.as_str())
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// Texts in every resource of every task and offer (resource names, the unreserved
/// role): one shared copy of each, made without an allocation when decoded or converted.
const WELL_KNOWN: [&str; 6] = ["cpus", "mem", "disk", "ports", "gpus", "*"];

fn well_known(s: &str) -> Option<Text> {
    static TEXTS: OnceLock<[Text; 6]> = OnceLock::new();
    if s.len() > 5 {
        return None;
    }
    let i = WELL_KNOWN.iter().position(|w| *w == s)?;
    Some(TEXTS.get_or_init(|| WELL_KNOWN.map(|w| Text(Arc::from(w))))[i].clone())
}

/// The texts decoded last on one thread. A message repeats its ids (an agent's report names
/// its agent id twice per task, each task id twice, its framework's id and role for every
/// task), and a repeat shares the first copy instead of allocating its own: about six of
/// the fourteen-odd allocations of a decoded task (counted from the report's shape; decode
/// time did not move measurably), and shared ids in the state built from them.
struct Recent {
    texts: [(Text, u64); 8],
    clock: u64,
}

thread_local! {
    static RECENT: std::cell::RefCell<Recent> = std::cell::RefCell::new(Recent {
        texts: std::array::from_fn(|_| (Text::default(), 0)),
        clock: 0,
    });
}

impl Recent {
    /// `s` as a Text: a recent one if equal, else a new one replacing the least recent.
    fn get(&mut self, s: &str) -> Text {
        self.clock += 1;
        let (mut oldest, mut oldest_use) = (0, u64::MAX);
        for (i, (t, used)) in self.texts.iter_mut().enumerate() {
            if t.len() == s.len() && t.as_str() == s {
                *used = self.clock;
                return t.clone();
            }
            if *used < oldest_use {
                (oldest, oldest_use) = (i, *used);
            }
        }
        let t = Text::from(s);
        self.texts[oldest] = (t.clone(), self.clock);
        t
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        well_known(s).unwrap_or_else(|| Text(Arc::from(s)))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        well_known(&s).unwrap_or_else(|| Text(Arc::from(s)))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Text::from(s.as_str())
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.as_str().to_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, o: &String) -> bool {
        self.as_str() == o.as_str()
    }
}

impl PartialEq<Text> for str {
    fn eq(&self, o: &Text) -> bool {
        self == o.as_str()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, o: &Text) -> bool {
        *self == o.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, o: &Text) -> bool {
        self.as_str() == o.as_str()
    }
}

/// So that a decoded JSON document can be checked against an id (`v["id"] == id.value`).
impl PartialEq<Text> for serde_json::Value {
    fn eq(&self, o: &Text) -> bool {
        self.as_str() == Some(o.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            // Straight from the input (a `String` first would be two allocations), and
            // none at all when the text was just decoded on this thread.
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text, E> {
                Ok(RECENT.with(|r| r.borrow_mut().get(s)))
            }
        }
        d.deserialize_str(V)
    }
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        pub struct $name {
            pub value: Text,
        }
        impl $name {
            pub fn new(value: impl Into<Text>) -> Self {
                Self { value: value.into() }
            }
            pub fn as_str(&self) -> &str {
                &self.value
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.value)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::new(s)
            }
        }
        impl From<Text> for $name {
            fn from(s: Text) -> Self {
                Self { value: s }
            }
        }
    };
}

id_type!(
    /// `FrameworkID`: `<master-id>-<nnnn>`.
    FrameworkId
);
id_type!(
    /// `AgentID`: `<master-id>-S<n>`.
    AgentId
);
id_type!(
    /// `OfferID`: `<master-id>-O<n>`.
    OfferId
);
id_type!(
    /// `TaskID`, chosen by the framework.
    TaskId
);
id_type!(
    /// `ExecutorID`; for the command executor it equals the task id.
    ExecutorId
);
id_type!(
    /// `OperationID`, chosen by the framework.
    OperationId
);

/// `ContainerID`: a value and an optional parent (nested containers).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ContainerId {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<ContainerId>>,
}

impl ContainerId {
    pub fn new(value: impl Into<String>) -> Self {
        Self { value: value.into(), parent: None }
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.parent {
            write!(f, "{p}.")?;
        }
        f.write_str(&self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn text_behaves_as_the_str_it_holds() {
        let t = Text::from("a\"b");
        assert_eq!(t, "a\"b");
        assert_eq!("a\"b", t);
        assert_eq!(t, String::from("a\"b"));
        let (a, b) = (Text::from("a"), Text::from("b"));
        assert!(a < b);
        assert_eq!(format!("{t} {t:?}"), "a\"b \"a\\\"b\"");
        // Looked up by `&str` in a map keyed by Text (hash and Borrow agree).
        let m: HashMap<Text, u32> = [(Text::from("x"), 1)].into();
        assert_eq!(m.get("x"), Some(&1));
        // Wire form: a plain string, escapes decoded.
        let id: TaskId = serde_json::from_str(r#"{"value":"a\"b\u00e9"}"#).unwrap();
        assert_eq!(id.value, "a\"bé");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#"{"value":"a\"bé"}"#);
        assert!(serde_json::from_str::<TaskId>(r#"{"value":3}"#).is_err());
        assert_eq!(serde_json::json!({"value": "a\"bé"})["value"], id.value);
        // Clones share.
        let c = id.clone();
        assert!(c.value.shares(&id.value));
        // Resource names and "*" are one copy each, however often decoded.
        let r: Vec<Text> = serde_json::from_str(r#"["cpus","cpus","*","*","cpusx"]"#).unwrap();
        assert!(r[0].shares(&r[1]) && r[2].shares(&r[3]) && r[0].shares(&Text::from("cpus")));
        assert!(!r[4].shares(&Text::from("cpusx")));
        assert!(Text::from(String::from("mem")).shares(&Text::from(&String::from("mem"))));
    }

    #[test]
    fn a_text_decoded_again_soon_on_the_same_thread_is_the_same_copy() {
        // As in an agent's report: the agent's id and the task's id again in its status.
        let ids: Vec<TaskId> = serde_json::from_str(
            r#"[{"value":"agent-1"},{"value":"t1"},{"value":"agent-1"},{"value":"t1"},{"value":"t2"},{"value":"agent-1"}]"#,
        )
        .unwrap();
        assert!(ids[0].value.shares(&ids[2].value) && ids[0].value.shares(&ids[5].value));
        assert!(ids[1].value.shares(&ids[3].value));
        assert!(!ids[1].value.shares(&ids[4].value) && ids[1] != ids[4]);
        // Equal text from elsewhere (not decoded) is its own copy.
        assert!(!Text::from("agent-1").shares(&ids[0].value));
        // Only the last few are remembered: after eight other texts, a new copy.
        let others: Vec<Text> = serde_json::from_str(r#"["a","b","c","d","e","f","g","h"]"#).unwrap();
        assert_eq!(others.len(), 8);
        let later: TaskId = serde_json::from_str(r#"{"value":"agent-1"}"#).unwrap();
        assert!(later == ids[0] && !later.value.shares(&ids[0].value));
        // Each thread has its own.
        let elsewhere = std::thread::spawn(|| serde_json::from_str::<TaskId>(r#"{"value":"agent-1"}"#).unwrap());
        assert!(!elsewhere.join().unwrap().value.shares(&later.value));
    }
}
