//! Persistence: one `sqlx::Any` pool over SQLite (default, one file in the
//! data directory) or PostgreSQL (by URL), migrated at open with the same
//! embedded migrations for both.
//!
//! Portability rules every query in this crate follows: TEXT and BIGINT
//! columns only (booleans 0/1, timestamps unix ms), `$1, $2, …` placeholders
//! in order, ids generated here rather than by the database, and
//! `ON CONFLICT … DO UPDATE` for upserts.

use std::borrow::Cow;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::Row as _;

use crate::error::{Error, Result};

/// The connection pool every module queries through.
pub type Db = sqlx::AnyPool;

/// The migrations, compiled into the binary so an installed `slowpath` needs
/// no files next to it.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "tenants",
        include_str!("../../migrations/0002_tenants.sql"),
    ),
    (
        3,
        "traffic_reports",
        include_str!("../../migrations/0003_traffic_reports.sql"),
    ),
    (
        4,
        "vhosts",
        include_str!("../../migrations/0004_vhosts.sql"),
    ),
    (5, "mesh", include_str!("../../migrations/0005_mesh.sql")),
    (6, "edge", include_str!("../../migrations/0006_edge.sql")),
    (
        7,
        "domains",
        include_str!("../../migrations/0007_domains.sql"),
    ),
    (
        8,
        "agent_spools",
        include_str!("../../migrations/0008_agent_spools.sql"),
    ),
    (
        9,
        "mesh_channels",
        include_str!("../../migrations/0009_mesh_channels.sql"),
    ),
];

/// [`MIGRATIONS`] as a sqlx migration source.
#[derive(Debug)]
struct EmbeddedMigrations;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend for a database URL, or an error naming `--database-url`.
    pub fn of_url(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(Error::invalid(
                "--database-url",
                "--database-url must start with postgres:// (or sqlite:)",
            ))
        }
    }
}

/// File name of the default SQLite database in the data directory.
pub const SQLITE_FILE: &str = "totoro.db";

/// The SQLite URL for the default database in `data_dir`.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join(SQLITE_FILE).display())
}

/// Opens the pool and applies pending migrations.
pub async fn open(url: &str) -> Result<Db> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url)?;
    let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
    // SQLite allows one writer; with several pooled connections a read
    // transaction that later writes can fail with SQLITE_BUSY instead of
    // waiting. One connection serializes everything, which is plenty for a
    // control plane.
    let options = match backend {
        Backend::Sqlite => options.max_connections(1),
        Backend::Postgres => options.max_connections(16),
    };
    let pool = options.connect(url).await?;
    let migrator = Migrator::new(EmbeddedMigrations)
        .await
        .map_err(|e| Error::Internal(format!("loading migrations: {e}")))?;
    migrator
        .run(&pool)
        .await
        .map_err(|e| Error::Internal(format!("migrating the database: {e}")))?;
    tracing::info!(?backend, "database ready");
    Ok(pool)
}

/// Reads a `meta` value.
pub async fn meta_get<'c, E>(exec: E, key: &str) -> Result<Option<String>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(exec)
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<String, _>(0)?),
        None => None,
    })
}

/// Writes a `meta` value (insert or replace).
pub async fn meta_set<'c, E>(exec: E, key: &str, value: &str) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(exec)
    .await?;
    Ok(())
}
