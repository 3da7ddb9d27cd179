//! Load balancing the openMosix way, sans-IO.
//!
//! This crate owns the decisions: the load figures and their smoothing, the load vector and
//! the choice of gossip peers ([`load`]), and which process goes where and when ([`policy`]:
//! move when the own load exceeds a target's by more than the cost of moving weighed against
//! the expected gain; memory ushering; no ping-pong; stay / lstay / lock / block; placement at
//! `mosrun`). The simulator ([`sim`]) runs the very same code over thousands of simulated
//! nodes.
//!
//! It must not know about sockets, actors, clocks, /proc or cgroups: callers measure, pass
//! plain data and an explicit `now`, and carry out the decisions they get back. Its only
//! dependency on the rest of omnode is the node number type of `discovery`.

pub mod load;
pub mod policy;
pub mod sim;

pub use discovery::NodeId;
