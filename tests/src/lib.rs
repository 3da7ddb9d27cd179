//! Support code for the cluster integration tests
