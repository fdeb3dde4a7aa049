//! What governance decides on for one call, as one value: the journal's request hash covers
//! it, an approval request proposes it, and an edit changes it.

use aios_core::{EffectClass, Money};
use serde::{Deserialize, Serialize};

use crate::state::CallKind;

/// One call as governance judged it: the action, its effect class, and the cost, risk,
/// confidence and input it was decided on.
///
/// It is what an approval request's `proposed` holds (so the approver sees what governance
/// saw), and what an [`ApprovalResponse::Edit`](aios_governance::ApprovalResponse::Edit)
/// changes: an edit is a JSON object naming any of `input`, `cost`, `risk` and `confidence`
/// with their new values (`action` and `effect` may be repeated but not changed; `risk` may
/// not be lowered nor `confidence` raised). The edited call's cost is then worked out again
/// the way the first one's was (a model call's from its edited request, never from the edit;
/// a connector call's at least the connector's declared default), and it is governed again
/// before it runs. A resumed call whose attributes differ from those approved is decided
/// again, never run on the old approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernedCall {
    /// The action (`email.send`, `model.complete`).
    pub action: String,
    /// Its effect class.
    pub effect: EffectClass,
    /// The estimated cost governance and the budgets saw.
    pub cost: Money,
    /// The money the call moves (a payment's amount), read from `input` where the operation
    /// declares it ([`OperationSpec::moves_money`](aios_core::OperationSpec::moves_money)),
    /// zero otherwise: worked out from `input`, never edited directly.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub amount: Money,
    /// The risk estimate, 0 to 100.
    pub risk: u32,
    /// The confidence, 0 to 1, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// The input fields the operation declares governed, by key (the recipient, the payee):
    /// what `context_equals` rules and custom policies see. Worked out from `input`, never
    /// edited directly.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub context: std::collections::BTreeMap<String, serde_json::Value>,
    /// The connector input, or the model request.
    pub input: serde_json::Value,
}

/// The fields an edit may change.
const EDITABLE: [&str; 4] = ["input", "cost", "risk", "confidence"];

impl GovernedCall {
    /// The journaled request hash of this call (SHA-256, hex).
    pub(crate) fn hash(&self, kind: CallKind) -> String {
        crate::context::hash_of(kind, self)
    }

    /// Whether `proposed` (an approval request's proposal) describes exactly this call;
    /// compares field by field without building this call's JSON.
    pub(crate) fn is(&self, proposed: &serde_json::Value) -> bool {
        let Some(p) = proposed.as_object() else {
            return false;
        };
        let known = [
            "action",
            "effect",
            "cost",
            "amount",
            "risk",
            "confidence",
            "context",
            "input",
        ];
        p.keys().all(|k| known.contains(&k.as_str()))
            && p.get("action").and_then(|v| v.as_str()) == Some(self.action.as_str())
            && p.get("effect")
                .and_then(|v| serde_json::from_value::<EffectClass>(v.clone()).ok())
                == Some(self.effect)
            && p.get("cost").and_then(|v| v.as_i64()) == Some(self.cost.minor())
            && p.get("amount").map_or(Some(0), |v| v.as_i64()) == Some(self.amount.minor())
            && p.get("risk").and_then(|v| v.as_u64()) == Some(u64::from(self.risk))
            && match (p.get("confidence"), self.confidence) {
                (None, None) => true,
                (Some(v), Some(c)) => v.as_f64() == Some(f64::from(c)),
                _ => false,
            }
            && match p.get("context") {
                None => self.context.is_empty(),
                Some(serde_json::Value::Object(m)) => {
                    m.len() == self.context.len()
                        && self.context.iter().all(|(k, v)| m.get(k) == Some(v))
                }
                Some(_) => false,
            }
            && p.get("input") == Some(&self.input)
    }

    /// The call as edited by `patch` (see the type's docs), or why the edit is refused.
    ///
    /// ```
    /// use aios_core::{EffectClass, Money};
    /// use aios_orchestrator::GovernedCall;
    /// let call = GovernedCall {
    ///     action: "bank.pay".into(), effect: EffectClass::Irreversible,
    ///     cost: Money::from_minor(100), amount: Money::ZERO, risk: 10, confidence: None,
    ///     context: Default::default(), input: serde_json::json!({ "to": "acme" }),
    /// };
    /// let edited = call.edited(&serde_json::json!({ "cost": 50 })).unwrap();
    /// assert_eq!(edited.cost, Money::from_minor(50));
    /// assert_eq!(edited.input, call.input);
    /// assert!(call.edited(&serde_json::json!({ "action": "bank.refund" })).is_err());
    /// assert!(call.edited(&serde_json::json!({ "amount": 5 })).is_err());
    /// assert!(call.edited(&serde_json::json!({ "limit": 5 })).is_err());
    /// ```
    pub fn edited(&self, patch: &serde_json::Value) -> Result<GovernedCall, String> {
        let Some(fields) = patch.as_object() else {
            return Err(format!(
                "an edit must be an object naming any of `input`, `cost`, `risk`, `confidence`; got `{patch}`"
            ));
        };
        if fields.is_empty() {
            return Err(
                "an edit must change at least one of `input`, `cost`, `risk`, `confidence`".into(),
            );
        }
        let mut merged = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let Some(target) = merged.as_object_mut() else {
            return Err("the proposed call is not an object".into());
        };
        for (key, value) in fields {
            match key.as_str() {
                k if EDITABLE.contains(&k) => {
                    target.insert(key.clone(), value.clone());
                }
                "action" | "effect" => {
                    if target.get(key) != Some(value) {
                        return Err(format!(
                            "an edit cannot change `{key}` (proposed {}, edit {value})",
                            target.get(key).cloned().unwrap_or_default()
                        ));
                    }
                }
                "context" | "amount" => {
                    if target.get(key).unwrap_or(&serde_json::Value::Null) != value {
                        return Err(format!(
                            "an edit cannot change `{key}` directly: it is read from the input; edit `input` instead"
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "an edit names unknown field `{other}`; it may change `input`, `cost`, `risk`, `confidence`"
                    ))
                }
            }
        }
        let edited: GovernedCall =
            serde_json::from_value(merged).map_err(|e| format!("the edit is malformed: {e}"))?;
        if edited.cost < Money::ZERO {
            return Err(format!(
                "an edit cannot set a negative cost ({})",
                edited.cost
            ));
        }
        // the agent's own assessment is a floor: a human may say an action is riskier or
        // less certain, never talk it under a rule
        if edited.risk < self.risk {
            return Err(format!(
                "an edit cannot lower `risk` (proposed {}, edit {})",
                self.risk, edited.risk
            ));
        }
        match (self.confidence, edited.confidence) {
            (Some(p), Some(e)) if e > p => {
                return Err(format!(
                    "an edit cannot raise `confidence` (proposed {p}, edit {e})"
                ))
            }
            (None, Some(e)) => {
                return Err(format!(
                    "an edit cannot give a confidence the agent did not (edit {e})"
                ))
            }
            (Some(p), None) => {
                return Err(format!(
                    "an edit cannot drop the agent's confidence (proposed {p})"
                ))
            }
            _ => {}
        }
        Ok(edited)
    }
}

fn is_zero(m: &Money) -> bool {
    *m == Money::ZERO
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call() -> GovernedCall {
        GovernedCall {
            action: "bank.pay".into(),
            effect: EffectClass::Irreversible,
            cost: Money::from_minor(120),
            amount: Money::from_minor(12_000),
            risk: 30,
            confidence: Some(0.8),
            context: [("payee".to_string(), serde_json::json!("acme"))].into(),
            input: serde_json::json!({ "to": "acme", "amount": 120 }),
        }
    }

    #[test]
    fn a_call_is_its_own_proposal_and_no_other() {
        let c = call();
        assert!(c.is(&serde_json::to_value(&c).unwrap()));
        let without_confidence = GovernedCall {
            confidence: None,
            ..call()
        };
        assert!(without_confidence.is(&serde_json::to_value(&without_confidence).unwrap()));
        for other in [
            GovernedCall {
                action: "bank.refund".into(),
                ..call()
            },
            GovernedCall {
                effect: EffectClass::Reversible,
                ..call()
            },
            GovernedCall {
                cost: Money::from_minor(121),
                ..call()
            },
            GovernedCall {
                amount: Money::from_minor(12_001),
                ..call()
            },
            GovernedCall {
                amount: Money::ZERO,
                ..call()
            },
            GovernedCall { risk: 31, ..call() },
            GovernedCall {
                confidence: Some(0.7),
                ..call()
            },
            GovernedCall {
                confidence: None,
                ..call()
            },
            GovernedCall {
                input: serde_json::json!({ "to": "mallory" }),
                ..call()
            },
        ] {
            assert!(!c.is(&serde_json::to_value(&other).unwrap()), "{other:?}");
        }
        let mut extra = serde_json::to_value(&c).unwrap();
        extra["note"] = serde_json::json!("x");
        assert!(!c.is(&extra), "an unknown field is not this call");
        assert!(!c.is(&serde_json::json!("bank.pay")));
    }
}
