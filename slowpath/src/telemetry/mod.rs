//! What comes back from the data plane: [`events_drain`] reads the
//! fastpath's event rings into the [`audit`] log, and tenant traffic into
//! [`traffic_reports`] (seed 002's reports, from a durable outbox) and the
//! quota tracker.

pub mod audit;
pub mod events_drain;
pub mod metrics;
pub mod traffic_reports;
