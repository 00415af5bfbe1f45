//! Totoro's load generators and the frp-protocol client they and the tests
//! share.
//!
//! - [`client`]: an frp client that speaks to the server exactly as upstream
//!   frpc does on the wire (same JSON key order, same yamux window grant,
//!   same CFB and snappy layering), built on std threads.
//! - [`backend`]: local services to tunnel to (echo, sink, source).
//! - [`proc`]: launching the real binaries and reading their /proc figures.
//! - [`load`]: the load generators: latency (open- and closed-loop),
//!   connection rate, bulk, idle connections, HTTP request rate, frp login
//!   rate, registered-proxy cost, and attacks on a server's memory.
//! - [`micro`]: in-process timings of pure data-plane pieces (the vhost
//!   route table at 100k hostnames).
//! - [`netns`]: network namespaces as machines, for the mesh's tests and
//!   its bench ([`mesh`]).

pub mod agents;
pub mod backend;
pub mod client;
pub mod harness;
pub mod load;
pub mod mesh;
pub mod micro;
pub mod netns;
pub mod proc;
