//! Who acted.

use serde::{Deserialize, Serialize};

use crate::{AgentId, HumanId};

/// The one identity model shared by memory, governance, connectors and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Principal {
    /// A person; accountability always resolves to one.
    Human(HumanId),
    /// An AI agent acting under a delegation.
    Agent(AgentId),
    /// The AIOS runtime itself (scheduling, expiry, pruning).
    System,
}

impl Principal {
    /// The human behind this principal, if it is one.
    pub fn human(&self) -> Option<HumanId> {
        match self {
            Principal::Human(h) => Some(*h),
            _ => None,
        }
    }

    /// The agent behind this principal, if it is one.
    pub fn agent(&self) -> Option<AgentId> {
        match self {
            Principal::Agent(a) => Some(*a),
            _ => None,
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Human(h) => write!(f, "human:{h}"),
            Principal::Agent(a) => write!(f, "agent:{a}"),
            Principal::System => f.write_str("system"),
        }
    }
}
