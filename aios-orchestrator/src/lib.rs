//! Orchestration for AIOS: role-based agents over task graphs with retries, timeouts, circuit breakers, model routing, checkpoints, crash-safe resume and human-in-the-loop.
