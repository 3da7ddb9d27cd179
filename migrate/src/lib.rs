//! migrate (stub)
