//! Runnable examples of AIOS; see `quickstart.rs`.
