//! The connector port: every side effect an agent causes goes through one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{Money, RunId, Secret, TaskId, Transience};

/// How far an action reaches into the world. Ordered: `ReadOnly < Reversible < Irreversible`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectClass {
    /// Reads only; nothing changes.
    ReadOnly,
    /// Changes something that can be undone (a draft, a calendar hold).
    Reversible,
    /// Changes something for good (an email sent, a payment made).
    Irreversible,
}

impl std::fmt::Display for EffectClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EffectClass::ReadOnly => "read_only",
            EffectClass::Reversible => "reversible",
            EffectClass::Irreversible => "irreversible",
        })
    }
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The string inside.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
    };
}

string_newtype!(
    /// The name of a connector (`email`, `calendar`, `crm`).
    ConnectorId
);
string_newtype!(
    /// A permission a connector needs (`email.send`, `calendar.read`).
    PermissionScope
);
string_newtype!(
    /// A stable key for one logical call. The same call, retried or replayed after a crash,
    /// carries the same key so the service behind the connector can deduplicate it.
    IdempotencyKey
);

impl IdempotencyKey {
    /// The key of the `seq`-th call of `task` in `run`; stable across retries and resumes.
    pub fn for_call(run: RunId, task: TaskId, seq: u32) -> Self {
        Self(format!("{run}/{task}/{seq}"))
    }
}

/// What a connector is and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorDescriptor {
    /// The connector's name.
    pub id: ConnectorId,
    /// The widest effect any of its operations has.
    pub effect: EffectClass,
    /// The permissions it needs.
    pub scopes: Vec<PermissionScope>,
    /// Whether the service deduplicates calls by [`IdempotencyKey`]. An irreversible connector
    /// that is not idempotent is never retried blindly after an uncertain outcome.
    pub idempotent: bool,
    /// What one call is expected to cost at least: the orchestrator reserves the larger of
    /// this and the agent's own estimate against the budgets before the call, and governance
    /// decides on it (zero when the connector costs nothing).
    #[serde(default)]
    pub default_cost: Money,
    /// Operations declared one by one (reading a mailbox and sending mail are different
    /// effects of one connector). When any is declared, a call of an operation not declared
    /// is refused; when none is, every operation has the connector-level `effect`,
    /// `idempotent` and `default_cost`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationSpec>,
}

impl ConnectorDescriptor {
    /// The declaration of `operation`: its own, the connector-level one when the connector
    /// declares no operations, `None` when it declares others only.
    pub fn operation(&self, operation: &str) -> Option<OperationSpec> {
        if self.operations.is_empty() {
            return Some(OperationSpec {
                name: operation.to_string(),
                effect: self.effect,
                idempotent: self.idempotent,
                default_cost: self.default_cost,
                governed: vec![],
                amount: None,
                description: String::new(),
                input_schema: None,
            });
        }
        self.operations
            .iter()
            .find(|o| o.name == operation)
            .cloned()
    }
}

/// One operation of a connector, as governance sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationSpec {
    /// The operation (`send`, `read`).
    pub name: String,
    /// Its effect class.
    pub effect: EffectClass,
    /// Whether the service deduplicates its calls by [`IdempotencyKey`].
    pub idempotent: bool,
    /// What one call costs at least.
    #[serde(default)]
    pub default_cost: Money,
    /// Input fields governance decides on, put in the request's context under their key
    /// (so `context_equals` rules and custom policies see the recipient or the payee).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub governed: Vec<GovernedField>,
    /// Where the money the operation moves is in its input (a payment's amount): governance
    /// decides on it apart from the call's cost (`amount_above`, `max_amount_per_action`) and
    /// the `payments` budget dimension counts it. A call whose input lacks it, or holds
    /// something that is not an amount, is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<AmountField>,
    /// What the operation does, for a model choosing tools (an MCP tool's description).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The JSON Schema of its input, offered to a model as the tool's parameters (an MCP
    /// tool's input schema); any object when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
}

impl OperationSpec {
    /// An operation with `effect`, idempotent, no default cost, no governed fields.
    pub fn new(name: impl Into<String>, effect: EffectClass) -> Self {
        Self {
            name: name.into(),
            effect,
            idempotent: true,
            default_cost: Money::ZERO,
            governed: vec![],
            amount: None,
            description: String::new(),
            input_schema: None,
        }
    }

    /// Describes the operation for a model choosing tools.
    pub fn described(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the JSON Schema of the operation's input (offered to a model as the tool's
    /// parameters).
    pub fn input_schema(mut self, schema: serde_json::Value) -> Self {
        self.input_schema = Some(schema);
        self
    }

    /// Declares that the service does not deduplicate calls.
    pub fn not_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }

    /// Sets what one call costs at least.
    pub fn default_cost(mut self, cost: Money) -> Self {
        self.default_cost = cost;
        self
    }

    /// Governs the input field at JSON pointer `pointer` (`/to`, `/payee/name`) under `key`.
    pub fn governs(mut self, key: impl Into<String>, pointer: impl Into<String>) -> Self {
        self.governed.push(GovernedField {
            key: key.into(),
            pointer: pointer.into(),
        });
        self
    }

    /// Declares that the operation moves the amount at JSON pointer `pointer`, written in
    /// major units: a decimal string (`"250.00"`) or a number (`250`, `250.5`), with at most
    /// two decimals.
    pub fn moves_money(mut self, pointer: impl Into<String>) -> Self {
        self.amount = Some(AmountField {
            pointer: pointer.into(),
            unit: AmountUnit::Major,
        });
        self
    }

    /// Declares that the operation moves the amount at JSON pointer `pointer`, written as an
    /// integer of minor units (`25000` for 250.00).
    pub fn moves_money_minor(mut self, pointer: impl Into<String>) -> Self {
        self.amount = Some(AmountField {
            pointer: pointer.into(),
            unit: AmountUnit::Minor,
        });
        self
    }

    /// The money a call with `input` moves: zero when the operation declares no amount, an
    /// error naming the field when it declares one the input lacks or holds wrongly.
    ///
    /// ```
    /// use aios_core::{EffectClass, Money, OperationSpec};
    /// let pay = OperationSpec::new("pay", EffectClass::Irreversible).moves_money("/amount");
    /// let input = serde_json::json!({ "payee": "acme", "amount": "250.00" });
    /// assert_eq!(pay.amount_in(&input), Ok(Money::from_minor(25_000)));
    /// assert_eq!(pay.amount_in(&serde_json::json!({ "amount": 12.5 })), Ok(Money::from_minor(1_250)));
    /// assert!(pay.amount_in(&serde_json::json!({ "payee": "acme" })).is_err());
    /// assert!(pay.amount_in(&serde_json::json!({ "amount": "-5" })).is_err());
    /// ```
    pub fn amount_in(&self, input: &serde_json::Value) -> Result<Money, String> {
        let Some(field) = &self.amount else {
            return Ok(Money::ZERO);
        };
        let at = format!(
            "input field `{}` of operation `{}`",
            field.pointer, self.name
        );
        let value = input.pointer(&field.pointer).ok_or_else(|| {
            format!("{at} is missing: the operation moves money and says how much there")
        })?;
        let amount = match (field.unit, value) {
            (AmountUnit::Major, serde_json::Value::String(s)) => {
                s.parse::<Money>().map_err(|e| format!("{at}: {e}"))?
            }
            (AmountUnit::Major, serde_json::Value::Number(n)) => n
                .to_string()
                .parse::<Money>()
                .map_err(|e| format!("{at}: {e}"))?,
            (AmountUnit::Minor, serde_json::Value::Number(n)) => Money::from_minor(
                n.as_i64()
                    .ok_or_else(|| format!("{at}: `{n}` is not a whole number of minor units"))?,
            ),
            (unit, other) => {
                return Err(format!(
                    "{at}: expected {}, got `{other}`",
                    match unit {
                        AmountUnit::Major => "an amount like \"250.00\"",
                        AmountUnit::Minor => "a whole number of minor units",
                    }
                ))
            }
        };
        if amount.is_negative() {
            return Err(format!("{at}: `{amount}` is negative"));
        }
        Ok(amount)
    }
}

/// Where in an operation's input the money it moves is (see [`OperationSpec::moves_money`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountField {
    /// A JSON pointer (RFC 6901) into the input: `/amount`.
    pub pointer: String,
    /// How the amount is written.
    #[serde(default)]
    pub unit: AmountUnit,
}

/// How an amount is written in an operation's input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AmountUnit {
    /// Major units with at most two decimals: `"250.00"`, `250`, `250.5`.
    #[default]
    Major,
    /// A whole number of minor units: `25000`.
    Minor,
}

/// An input field governance decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernedField {
    /// The key in the request's context (`recipient`).
    pub key: String,
    /// Where in the input (a JSON pointer, RFC 6901: `/to`). A call whose input lacks it
    /// carries `null` under the key, so a rule expecting a value does not match.
    pub pointer: String,
}

/// One call of a connector.
#[derive(Debug, Clone)]
pub struct ConnectorCall {
    /// The operation (`send`, `create_event`).
    pub operation: String,
    /// Its input.
    pub input: serde_json::Value,
    /// The stable key of this logical call.
    pub idempotency_key: IdempotencyKey,
    /// The credential the host resolved for this call, if any. Never serialised, redacted in
    /// `Debug`.
    pub credential: Option<Secret>,
}

/// What a connector returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorOutput {
    /// The result.
    pub output: serde_json::Value,
    /// What the call cost (an SMS, an API fee), if anything.
    #[serde(default)]
    pub cost: Money,
}

/// Why a connector call failed, and whether a retry can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConnectorError {
    /// The service is down or overloaded.
    #[error("connector `{connector}` unavailable: {detail}")]
    Unavailable {
        /// The connector.
        connector: ConnectorId,
        /// What it said.
        detail: String,
    },
    /// Too many calls.
    #[error("connector `{connector}` rate limited")]
    RateLimited {
        /// The connector.
        connector: ConnectorId,
        /// How long it asked to wait.
        retry_after: Option<Duration>,
    },
    /// The call took too long; whether it took effect is unknown.
    #[error("connector `{connector}` timed out")]
    Timeout {
        /// The connector.
        connector: ConnectorId,
    },
    /// The credential was missing or refused.
    #[error("connector `{connector}` refused the credential")]
    Unauthorized {
        /// The connector.
        connector: ConnectorId,
    },
    /// The operation or input is wrong.
    #[error("invalid input to `{connector}` operation `{operation}`: {detail}")]
    InvalidInput {
        /// The connector.
        connector: ConnectorId,
        /// The operation.
        operation: String,
        /// What is wrong.
        detail: String,
    },
    /// The call failed for good.
    #[error("connector `{connector}` failed: {detail}")]
    Failed {
        /// The connector.
        connector: ConnectorId,
        /// What it said.
        detail: String,
    },
}

impl Transience for ConnectorError {
    fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectorError::Unavailable { .. }
                | ConnectorError::RateLimited { .. }
                | ConnectorError::Timeout { .. }
        )
    }
}

/// A side-effecting integration (email, calendar, CRM, payments).
///
/// Contract: `invoke` performs `call.operation` at most once per idempotency key if the
/// descriptor says `idempotent`; errors say whether a retry can help. It must not retry
/// internally and must be safe to call concurrently.
#[async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// What this connector is.
    fn descriptor(&self) -> &ConnectorDescriptor;

    /// Performs one call.
    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError>;
}

/// A side effect a [`RecordingConnector`] performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEffect {
    /// The operation.
    pub operation: String,
    /// Its input.
    pub input: serde_json::Value,
    /// The key it carried.
    pub idempotency_key: IdempotencyKey,
}

#[derive(Debug, Default)]
struct Recorded {
    effects: Vec<RecordedEffect>,
    by_key: HashMap<IdempotencyKey, ConnectorOutput>,
    invocations: u64,
}

/// An in-memory connector that records every effect: the test double for any service.
///
/// When idempotent (the default), a call whose key was already performed returns the first
/// result and performs nothing; [`RecordingConnector::effects`] then shows each effect once
/// and [`RecordingConnector::invocations`] counts every call. Clones share the record.
///
/// ```
/// use aios_core::{Connector, ConnectorCall, EffectClass, IdempotencyKey, RecordingConnector};
/// # futures::executor::block_on(async {
/// let email = RecordingConnector::new("email", EffectClass::Irreversible);
/// let call = ConnectorCall {
///     operation: "send".into(),
///     input: serde_json::json!({"to": "a@example.com"}),
///     idempotency_key: IdempotencyKey::new("k1"),
///     credential: None,
/// };
/// email.invoke(call.clone()).await.unwrap();
/// email.invoke(call).await.unwrap();
/// assert_eq!(email.effects().len(), 1);
/// assert_eq!(email.invocations(), 2);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct RecordingConnector {
    descriptor: ConnectorDescriptor,
    state: Arc<Mutex<Recorded>>,
}

impl RecordingConnector {
    /// An idempotent recording connector named `id` with effect class `effect`.
    pub fn new(id: impl Into<String>, effect: EffectClass) -> Self {
        Self {
            descriptor: ConnectorDescriptor {
                id: ConnectorId::new(id),
                effect,
                scopes: vec![],
                idempotent: true,
                default_cost: Money::ZERO,
                operations: vec![],
            },
            state: Arc::default(),
        }
    }

    /// Declares one operation ([`ConnectorDescriptor::operations`]).
    pub fn with_operation(mut self, operation: OperationSpec) -> Self {
        self.descriptor.operations.push(operation);
        self
    }

    /// Declares what one call costs at least ([`ConnectorDescriptor::default_cost`]).
    pub fn with_default_cost(mut self, cost: Money) -> Self {
        self.descriptor.default_cost = cost;
        self
    }

    /// Declares that the connector needs `scope`.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.descriptor.scopes.push(PermissionScope::new(scope));
        self
    }

    /// Makes the connector not deduplicate: every call performs its effect again.
    pub fn not_idempotent(mut self) -> Self {
        self.descriptor.idempotent = false;
        self
    }

    /// Every effect performed, in order.
    pub fn effects(&self) -> Vec<RecordedEffect> {
        self.state.lock().effects.clone()
    }

    /// How many times `invoke` was called, duplicates included.
    pub fn invocations(&self) -> u64 {
        self.state.lock().invocations
    }
}

#[async_trait]
impl Connector for RecordingConnector {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        let mut st = self.state.lock();
        st.invocations += 1;
        if self.descriptor.idempotent {
            if let Some(out) = st.by_key.get(&call.idempotency_key) {
                return Ok(out.clone());
            }
        }
        let n = st.effects.len() + 1;
        let out = ConnectorOutput {
            output: serde_json::json!({ "ok": true, "effect": n, "operation": call.operation }),
            cost: Money::ZERO,
        };
        st.effects.push(RecordedEffect {
            operation: call.operation,
            input: call.input,
            idempotency_key: call.idempotency_key.clone(),
        });
        st.by_key.insert(call.idempotency_key, out.clone());
        Ok(out)
    }
}
