//! transport-tcp (stub)
