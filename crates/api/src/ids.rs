//! Wrapped identifiers: `{"value": "..."}` on the wire.
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        pub struct $name {
            pub value: String,
        }
        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
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
