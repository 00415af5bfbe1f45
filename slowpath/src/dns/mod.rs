//! DNS for the edge (issue 16): checking that a user owns a domain
//! ([`verify`]: a TXT record or an HTTP token), and seed 004's DNS manager
//! ([`manager`]), which keeps the A/AAAA records of routed hostnames in
//! one zone by RFC 2136 dynamic updates signed with TSIG ([`update`]).

pub mod manager;
pub mod update;
pub mod verify;
