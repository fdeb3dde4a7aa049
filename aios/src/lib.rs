//! # AIOS
//!
//! Run AI agents as a governed operating system for a small organisation, down to a one-person
//! company. This facade re-exports the family; add it as your one dependency.
//!
//! - [`core`]: ids, principals, clocks, timers, money, and the ports (models, connectors,
//!   embedders, credentials, audit log) the host supplies.
//! - `memory` (feature `memory`): layered memory with provenance, versions and hybrid recall.
//! - `governance` (feature `governance`): accountability anchors, delegation, decisions,
//!   budgets, approvals.
//! - `orchestrator` (feature `orchestrator`): governed agents over task graphs.
//! - `sqlite` (feature `sqlite`): the embedded durable default, every storage port on one
//!   SQLite file.
//!
//! ```
//! use aios::core::{Clock, ManualClock};
//! let clock = ManualClock::default();
//! let _now = clock.now();
//! ```

pub use aios_core as core;
#[cfg(feature = "governance")]
pub use aios_governance as governance;
#[cfg(feature = "memory")]
pub use aios_memory as memory;
#[cfg(feature = "orchestrator")]
pub use aios_orchestrator as orchestrator;
#[cfg(feature = "sqlite")]
pub use aios_sqlite as sqlite;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
