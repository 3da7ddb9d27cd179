//! discovery (stub)
