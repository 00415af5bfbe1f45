//! The domain, each over its own tables; every multi-step change is one
//! transaction: relay [`nodes`], [`invites`] and the [`tickets`] they
//! resolve to, seed 002's [`tenants`] and their [`quota`] per period, and
//! seed 003's [`mesh`] controller; the edge's [`edge`] routes, their
//! [`domains`] and [`certs`].

pub mod certs;
pub mod domains;
pub mod edge;
pub mod invites;
pub mod mesh;
pub mod nodes;
pub mod quota;
pub mod tenants;
pub mod tickets;
