//! What comes back from the data plane: [`events_drain`] reads the
//! fastpath's event rings into the [`audit`] log, and tenant traffic into
//! [`traffic_reports`] (seed 002's reports, from a durable outbox) and the
//! quota tracker; [`host`] reads what a node's heartbeat says.

pub mod audit;
pub mod events_drain;
pub mod host;
pub mod metrics;
pub mod traffic_reports;
