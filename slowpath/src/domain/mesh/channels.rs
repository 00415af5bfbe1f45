//! Who holds which mesh channel: a node's control channel (`/ws/control`)
//! and a relay's server channel (`/ws/server`) are each held by one
//! control plane, and several may share one PostgreSQL (issue 17).
//!
//! A node is online, and a relay's node locations stand, while a channel
//! row names them. A control plane that starts clears the rows it held
//! (its channels died with it) and then what no row holds up; rows another
//! live control plane holds stay, and so do their nodes' flags and their
//! relays' locations. A channel that closes clears its node or relay only
//! if its row is still its own: a node or relay that already came back on
//! a newer channel (here or through another control plane) stays.
//!
//! A control plane that dies for good leaves its rows until it starts
//! again; its nodes and relays reconnect elsewhere and take their rows
//! over.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ms;
use crate::error::Result;

/// One channel, as its row names it.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The holding control plane's own node id.
    pub control_plane: String,
    /// Unique within the control plane's life.
    pub id: String,
}

impl Channel {
    /// A new channel held by `control_plane`.
    pub fn new(control_plane: &str) -> Channel {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Channel {
            control_plane: control_plane.to_owned(),
            id: format!("{}-{n}", std::process::id()),
        }
    }
}

/// The two kinds of channel: (table, key column).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A mesh node's control channel.
    Node,
    /// A relay's server channel.
    Server,
}

impl Kind {
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Kind::Node => ("mesh_node_channels", "node_id"),
            Kind::Server => ("mesh_server_channels", "server_id"),
        }
    }
}

/// `ch` holds the channel of node or server `id` now (taking it over from
/// any older channel).
pub async fn open<'c, E>(exec: E, kind: Kind, id: u32, ch: &Channel) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let (table, key) = kind.table();
    sqlx::query(&format!(
        "INSERT INTO {table} ({key}, control_plane, channel, opened_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT ({key}) DO UPDATE SET control_plane = excluded.control_plane, \
         channel = excluded.channel, opened_ms = excluded.opened_ms"
    ))
    .bind(i64::from(id))
    .bind(&ch.control_plane)
    .bind(&ch.id)
    .bind(now_ms())
    .execute(exec)
    .await?;
    Ok(())
}

/// `ch` closed: its row goes if it is still its own. True when it was (the
/// caller then clears the node's flag or the relay's locations).
pub async fn close<'c, E>(exec: E, kind: Kind, id: u32, ch: &Channel) -> Result<bool>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let (table, key) = kind.table();
    let done = sqlx::query(&format!(
        "DELETE FROM {table} WHERE {key} = $1 AND control_plane = $2 AND channel = $3"
    ))
    .bind(i64::from(id))
    .bind(&ch.control_plane)
    .bind(&ch.id)
    .execute(exec)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// At start: forget the channels `control_plane` held before (they died
/// with it).
pub async fn forget_own<'c, E>(exec: E, kind: Kind, control_plane: &str) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let (table, _) = kind.table();
    sqlx::query(&format!("DELETE FROM {table} WHERE control_plane = $1"))
        .bind(control_plane)
        .execute(exec)
        .await?;
    Ok(())
}
