//! Governance for AIOS: accountability anchors, delegation with autonomy limits, escalation, approvals, atomic budgets, operator controls and pure, explainable decisions.
