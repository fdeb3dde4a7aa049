//! Workflows: task graphs on petgraph, validated before they run.

use std::collections::{BTreeMap, HashMap};

use aios_core::RoleId;
use petgraph::graph::DiGraph;
use serde::{Deserialize, Serialize};

use crate::OrchestratorError;

/// The name of a task, unique within its workflow (`research`, `draft`, `send`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskName(String);

impl TaskName {
    /// A task name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TaskName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TaskName {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// One task: which role does it, with what input, after which tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique name.
    pub name: TaskName,
    /// The role whose agent runs it.
    pub role: RoleId,
    /// Its own input; outputs of its dependencies are passed beside it.
    pub input: serde_json::Value,
    /// Tasks that must complete first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<TaskName>,
}

impl TaskSpec {
    /// A task for `role` (its key, as [`Role::new`](crate::Role::new) takes it, or its
    /// [`RoleId`]) with `input` and no dependencies.
    ///
    /// ```
    /// use aios_orchestrator::TaskSpec;
    /// let by_key = TaskSpec::new("draft", "writer", serde_json::json!({}));
    /// let by_id = TaskSpec::new("draft", aios_core::RoleId::from_name("writer"), serde_json::json!({}));
    /// assert_eq!(by_key, by_id);
    /// ```
    pub fn new(
        name: impl Into<TaskName>,
        role: impl Into<RoleId>,
        input: serde_json::Value,
    ) -> Self {
        Self {
            name: name.into(),
            role: role.into(),
            input,
            after: vec![],
        }
    }

    /// Adds dependencies.
    pub fn after<I, N>(mut self, deps: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<TaskName>,
    {
        self.after.extend(deps.into_iter().map(Into::into));
        self
    }
}

impl From<String> for TaskName {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// What a task receives: its own input and the outputs of the tasks it waited for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInput {
    /// The task's own input.
    pub input: serde_json::Value,
    /// Outputs of its dependencies, by task name.
    pub deps: BTreeMap<TaskName, serde_json::Value>,
}

/// A named, acyclic graph of tasks.
///
/// ```
/// use aios_orchestrator::{TaskSpec, Workflow};
/// use aios_core::RoleId;
/// let role = RoleId::from_name("writer");
/// let wf = Workflow::new("newsletter")
///     .task(TaskSpec::new("research", role, serde_json::json!({})))
///     .task(TaskSpec::new("draft", role, serde_json::json!({})).after(["research"]));
/// assert!(wf.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// The workflow's name.
    pub name: String,
    /// Its tasks.
    pub tasks: Vec<TaskSpec>,
}

impl Workflow {
    /// An empty workflow.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tasks: vec![],
        }
    }

    /// Adds a task.
    pub fn task(mut self, task: TaskSpec) -> Self {
        self.tasks.push(task);
        self
    }

    /// Checks names are unique, dependencies exist and there is no cycle; returns the
    /// dependency lists by task index.
    pub fn validate(&self) -> Result<Vec<Vec<usize>>, OrchestratorError> {
        let mut index = HashMap::with_capacity(self.tasks.len());
        for (i, t) in self.tasks.iter().enumerate() {
            if index.insert(&t.name, i).is_some() {
                return Err(OrchestratorError::InvalidWorkflow {
                    workflow: self.name.clone(),
                    detail: format!("task `{}` is defined twice", t.name),
                });
            }
        }
        let mut graph = DiGraph::<usize, ()>::with_capacity(self.tasks.len(), self.tasks.len());
        let nodes: Vec<_> = (0..self.tasks.len()).map(|i| graph.add_node(i)).collect();
        let mut deps = Vec::with_capacity(self.tasks.len());
        for (i, t) in self.tasks.iter().enumerate() {
            let mut mine = Vec::with_capacity(t.after.len());
            for d in &t.after {
                let Some(&j) = index.get(d) else {
                    return Err(OrchestratorError::InvalidWorkflow {
                        workflow: self.name.clone(),
                        detail: format!("task `{}` waits for unknown task `{d}`", t.name),
                    });
                };
                graph.add_edge(nodes[j], nodes[i], ());
                mine.push(j);
            }
            deps.push(mine);
        }
        if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
            let at = &self.tasks[graph[cycle.node_id()]].name;
            return Err(OrchestratorError::InvalidWorkflow {
                workflow: self.name.clone(),
                detail: format!("the dependencies form a cycle through task `{at}`"),
            });
        }
        Ok(deps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_workflows_name_the_problem() {
        let r = RoleId::from_name("r");
        let cases = [
            (
                Workflow::new("w")
                    .task(TaskSpec::new("a", r, serde_json::Value::Null))
                    .task(TaskSpec::new("a", r, serde_json::Value::Null)),
                "task `a` is defined twice",
            ),
            (
                Workflow::new("w")
                    .task(TaskSpec::new("a", r, serde_json::Value::Null).after(["zz"])),
                "waits for unknown task `zz`",
            ),
            (
                Workflow::new("w")
                    .task(TaskSpec::new("a", r, serde_json::Value::Null).after(["b"]))
                    .task(TaskSpec::new("b", r, serde_json::Value::Null).after(["a"])),
                "cycle",
            ),
        ];
        for (wf, expected) in cases {
            let err = wf.validate().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
