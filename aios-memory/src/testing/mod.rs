//! Test kit (feature `testing`): the conformance suite every [`crate::MemoryStore`] runs, a
//! fault-injecting store wrapper, [`longmem`], a synthetic long-conversation data set
//! shaped like LongMemEval, and [`synthetic`], the seeded records and vectors of the memory
//! benchmarks.
//!
//! ```
//! use aios_memory::{testing, InMemoryMemoryStore};
//! futures::executor::block_on(testing::memory_store_conformance(InMemoryMemoryStore::new));
//! ```

mod conformance;
mod faulty;
pub mod longmem;
pub mod synthetic;

pub use conformance::{memory_store_conformance, sample_record};
pub use faulty::FaultyMemoryStore;
