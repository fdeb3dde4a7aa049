//! Role templates: what an agent of the role does, may use, and does when it fails.

use std::sync::Arc;

use aios_core::{AgentId, ConnectorId, PathwayId, RoleId};
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::reliability::RetryPolicy;

/// What happens to a run when a task of this role fails for good (or a human rejects its
/// action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fallback", rename_all = "snake_case")]
pub enum Fallback {
    /// The run fails (the default).
    FailRun,
    /// The task completes with this output and the run goes on.
    Skip {
        /// The output dependents receive.
        output: serde_json::Value,
    },
    /// The accountable anchor is notified and the run fails.
    Escalate,
}

/// A role template (researcher, editor, outreach, ...) and the agent that plays it.
#[derive(Debug, Clone)]
pub struct Role {
    /// The role's id (`RoleId::from_name(name)` so governance documents can refer to it).
    pub id: RoleId,
    /// Its name.
    pub name: String,
    /// Instructions for its agent (the system prompt of the default LLM agent).
    pub instructions: String,
    /// The governance pathway its actions are requested on.
    pub pathway: PathwayId,
    /// That pathway's key in the governance model.
    pub pathway_key: String,
    /// Connectors its agent may call.
    pub connectors: Vec<ConnectorId>,
    /// How calls are retried and timed out.
    pub retry: RetryPolicy,
    /// What a failure does to the run.
    pub fallback: Fallback,
    /// Upper bound on calls an agent of this role makes in one task (a loop limit).
    pub max_calls: u32,
    /// The behaviour.
    pub agent: Arc<dyn Agent>,
}

impl Role {
    /// A role named `name` on the pathway named `pathway`, played by `agent`, with defaults:
    /// no connectors, the default retry policy, `FailRun`, at most 32 calls per task.
    pub fn new(name: impl Into<String>, pathway: &str, agent: Arc<dyn Agent>) -> Self {
        let name = name.into();
        Self {
            id: RoleId::from_name(&name),
            name,
            instructions: String::new(),
            pathway: PathwayId::from_name(pathway),
            pathway_key: pathway.to_string(),
            connectors: vec![],
            retry: RetryPolicy::default(),
            fallback: Fallback::FailRun,
            max_calls: 32,
            agent,
        }
    }

    /// Sets the instructions.
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        self.instructions = text.into();
        self
    }

    /// Allows a connector.
    pub fn connector(mut self, id: impl Into<String>) -> Self {
        self.connectors.push(ConnectorId::new(id));
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the fallback.
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// Sets the call limit per task.
    pub fn max_calls(mut self, limit: u32) -> Self {
        self.max_calls = limit;
        self
    }

    /// The agent identity of this role (one agent per role).
    pub fn agent_id(&self) -> AgentId {
        AgentId::from_name(&self.name)
    }
}
