//! Layered memory for AIOS: scopes, provenance, versions, bi-temporal history, eviction, verification, migration and hybrid retrieval.
