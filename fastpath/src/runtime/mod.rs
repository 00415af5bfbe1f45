//! The thread-per-core runtime: the [`server`] starts one [`worker`] per
//! core (a monoio runtime with its own listener); what workers share is in
//! [`shared`]; what every task on a worker may reach is its [`ctx`].

pub mod ctx;
pub mod parked;
pub mod ring;
pub mod server;
pub mod shared;
pub mod upgrade;
pub mod worker;
