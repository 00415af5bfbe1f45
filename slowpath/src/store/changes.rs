//! Changes made through one control plane, told to every other one that
//! shares its database, so that each republishes its own node's table
//! (issue 17: several `slowpath serve` on one PostgreSQL behind a load
//! balancer; an invite revoked through one ends its sessions on a node
//! another one governs).
//!
//! On PostgreSQL this is `NOTIFY` on the channel [`CHANNEL`]: the process
//! that made a change sends one line, `<origin> <what>`, after the change
//! is committed (so whoever reads it reads the new rows); every process
//! `LISTEN`s and acts on lines from other origins. `<what>` is `all` (a
//! full compile: nodes, tenants, ticket keys), `invite <id>` (one invite,
//! re-read) or `edge` (the edge's routes and certificates). On SQLite (one
//! file, one process) there is nobody to tell and nothing is sent.
//!
//! A listener that loses its connection reconnects, and then compiles
//! everything once: notifications sent while it was away are lost, as
//! PostgreSQL says, so what they said is read from the rows instead.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::policy::InviteId;

use crate::store::db::Db;

/// The PostgreSQL channel every control plane listens on.
pub const CHANNEL: &str = "totoro_changes";

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Anything a full compile reads (nodes, tenants, keys, invites).
    All,
    /// One invite (created, changed, revoked).
    Invite(InviteId),
    /// The edge's routes or certificates.
    Edge,
}

impl Change {
    /// The notification's text from `origin`.
    fn encode(self, origin: &str) -> String {
        match self {
            Change::All => format!("{origin} all"),
            Change::Invite(id) => format!("{origin} invite {id}"),
            Change::Edge => format!("{origin} edge"),
        }
    }

    /// A notification's origin and change; None for text this version
    /// does not know (a newer control plane's), which is then taken as
    /// [`Change::All`] by the caller.
    fn decode(text: &str) -> Option<(&str, Change)> {
        let mut words = text.split(' ');
        let origin = words.next().filter(|o| !o.is_empty())?;
        let change = match (words.next()?, words.next(), words.next()) {
            ("all", None, None) => Change::All,
            ("edge", None, None) => Change::Edge,
            ("invite", Some(id), None) => Change::Invite(InviteId::parse(id)?),
            _ => return None,
        };
        Some((origin, change))
    }
}

/// This process's end of the channel.
pub struct Changes {
    db: Db,
    /// The PostgreSQL URL (None on SQLite: nothing is sent or heard).
    url: Option<String>,
    /// This process, in what it sends (its own notifications come back to
    /// it and are skipped).
    origin: String,
}

/// Waited between attempts to listen again after an error.
const RETRY: Duration = Duration::from_secs(1);

impl Changes {
    /// Changes over `db`; `url` is its PostgreSQL URL, or None on SQLite.
    pub fn new(db: Db, url: Option<String>) -> Arc<Changes> {
        Arc::new(Changes {
            db,
            url,
            origin: format!("cp_{}", crate::credentials::random_hex(8)),
        })
    }

    /// Whether other control planes can hear this one.
    pub fn shared(&self) -> bool {
        self.url.is_some()
    }

    /// Tells the others about a committed change. A failure is logged, not
    /// returned: the change holds here, and the others pick it up at their
    /// next full compile.
    pub async fn announce(&self, change: Change) {
        if self.url.is_none() {
            return;
        }
        let text = change.encode(&self.origin);
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&text)
            .execute(&self.db)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, change = %text, "cannot tell the other control planes about a change");
        }
    }

    /// Runs forever (on PostgreSQL; returns at once on SQLite): calls `on`
    /// with each change another control plane announces, and with
    /// [`Change::All`] after listening was interrupted (what was said
    /// meanwhile is lost).
    pub async fn listen<F, Fut>(self: Arc<Self>, on: F)
    where
        F: Fn(Change) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(url) = self.url.clone() else {
            return;
        };
        let mut interrupted = false;
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other control planes' changes; retrying");
                    interrupted = true;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN {CHANNEL} failed; retrying");
                interrupted = true;
                tokio::time::sleep(RETRY).await;
                continue;
            }
            tracing::info!(channel = CHANNEL, origin = %self.origin, "listening for other control planes' changes");
            if std::mem::take(&mut interrupted) {
                on(Change::All).await;
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        let text = n.payload();
                        match Change::decode(text) {
                            Some((origin, _)) if origin == self.origin => {}
                            Some((origin, change)) => {
                                tracing::debug!(%origin, ?change, "a change from another control plane");
                                on(change).await;
                            }
                            None => {
                                tracing::info!(payload = %text, "a change this version does not know; compiling everything");
                                on(Change::All).await;
                            }
                        }
                    }
                    // The connection was lost and made again: anything
                    // said meanwhile is lost.
                    Ok(None) => {
                        tracing::warn!("the change listener reconnected; compiling everything");
                        on(Change::All).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the change listener failed; listening again");
                        interrupted = true;
                        tokio::time::sleep(RETRY).await;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_back_as_sent_and_nothing_else_is_taken_for_one() {
        let id = InviteId([7; 16]);
        for c in [Change::All, Change::Edge, Change::Invite(id)] {
            let text = c.encode("cp_1");
            assert_eq!(Change::decode(&text), Some(("cp_1", c)), "{text}");
        }
        for bad in [
            "",
            " all",
            "cp_1",
            "cp_1 invite",
            "cp_1 invite inv_zz",
            "cp_1 all more",
            "cp_1 tenants",
        ] {
            assert_eq!(Change::decode(bad), None, "{bad:?}");
        }
    }
}
