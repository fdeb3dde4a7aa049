//! Role templates: what an agent of the role does, may use, and does when it fails.

use std::sync::Arc;

use aios_core::{AgentId, ConnectorId, PathwayId, RoleId};
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::reliability::RetryPolicy;
use crate::scheduler::Priority;

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
    /// Other pathways the role acts on, chosen per action: (action prefix, pathway key).
    /// See [`Role::pathway_for`].
    pub pathways: Vec<(String, String)>,
    /// Connectors its agent may call.
    pub connectors: Vec<ConnectorId>,
    /// How calls are retried and timed out.
    pub retry: RetryPolicy,
    /// What a failure does to the run.
    pub fallback: Fallback,
    /// Upper bound on calls an agent of this role makes in one task (a loop limit).
    pub max_calls: u32,
    /// How urgent its model calls are in the model scheduler (default normal).
    pub priority: Priority,
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
            pathways: vec![],
            connectors: vec![],
            retry: RetryPolicy::default(),
            fallback: Fallback::FailRun,
            max_calls: 32,
            priority: Priority::Normal,
            agent,
        }
    }

    /// Requests actions starting with `prefix` (`payments.` for every operation of the
    /// `payments` connector, or one action, `payments.transfer`) on the pathway keyed
    /// `pathway` instead of the role's default: one role may act on several pathways, each
    /// with its own anchor, limits and escalation rules. The longest matching prefix wins.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_orchestrator::{FnAgent, Role};
    /// let agent = FnAgent::new(|_, _| Box::pin(async { Ok(serde_json::Value::Null) }));
    /// let role = Role::new("assistant", "admin", Arc::new(agent)).pathway_for("payments.", "paying");
    /// assert_eq!(role.pathway_of("payments.transfer").1, "paying");
    /// assert_eq!(role.pathway_of("email.send").1, "admin");
    /// assert_eq!(role.pathway_of("paymentsx.send").1, "admin");
    /// ```
    pub fn pathway_for(mut self, prefix: impl Into<String>, pathway: impl Into<String>) -> Self {
        self.pathways.push((prefix.into(), pathway.into()));
        self
    }

    /// The pathway `action` is requested on, and its key.
    pub fn pathway_of(&self, action: &str) -> (PathwayId, &str) {
        let best = self
            .pathways
            .iter()
            .filter(|(prefix, _)| {
                action == prefix
                    || (action.starts_with(prefix.as_str())
                        && (prefix.ends_with('.')
                            || action.as_bytes().get(prefix.len()) == Some(&b'.')))
            })
            .max_by_key(|(prefix, _)| prefix.len());
        match best {
            Some((_, key)) => (PathwayId::from_name(key), key.as_str()),
            None => (self.pathway, self.pathway_key.as_str()),
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

    /// Sets the priority of its model calls in the model scheduler
    /// ([`OrchestratorBuilder::model_scheduler`](crate::OrchestratorBuilder::model_scheduler)).
    pub fn model_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The agent identity of this role (one agent per role).
    pub fn agent_id(&self) -> AgentId {
        AgentId::from_name(&self.name)
    }
}
