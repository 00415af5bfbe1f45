//! Policy for the data plane: the local node's state compiled into a
//! `proto::policy` table ([`compile`], no I/O), written to the shm
//! directory the fastpath reads ([`publish`]: the [`publish::Publisher`]
//! that API calls and background tasks hand changes to), and the wait until
//! the fastpath's workers enforce it ([`applied`]).

pub mod applied;
pub mod compile;
pub mod publish;
