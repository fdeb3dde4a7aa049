//! Test kit (feature `testing`): a conformance suite for every port defined in this crate,
//! and fault-injecting wrappers.
//!
//! A conformance suite is an async function that exercises a port's documented contract and
//! panics (through `assert!`) on the first violation. Every implementation, in-memory or
//! durable, runs the same suite:
//!
//! ```
//! use aios_core::{testing, InMemoryAuditLog};
//! futures::executor::block_on(testing::audit_log_conformance(InMemoryAuditLog::new));
//! ```
//!
//! Fault injection: a [`Faults`] handle counts calls and decides which fail (the Nth, every
//! call after N) and whether each is delayed through a [`crate::Timer`]. Wrappers such as
//! [`FaultyModel`] consult it before forwarding; other crates' stores use [`Faults::check`]
//! the same way.

mod conformance;
mod faults;

pub use conformance::{
    audit_log_conformance, clock_conformance, connector_conformance, embedder_conformance,
    model_conformance, timer_conformance, vault_conformance,
};
pub use faults::{
    FaultPlan, Faults, FaultyAuditLog, FaultyConnector, FaultyEmbedder, FaultyModel, FaultyVault,
    InjectedFault,
};
