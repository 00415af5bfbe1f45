//! The data directory's contents: the database (a private SQLite file
//! unless --database-url names one), the admin key and the ticket signing
//! key, each checked to be this user's alone before it is used.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use slowpath::domain::tickets::{self, TicketSigner};
use slowpath::store::db::{self, Backend, Db};
use slowpath::store::{admin_key, private_files};

use crate::cli::ServeArgs;

/// The opened store and keys.
pub struct Store {
    pub db: Db,
    /// The admin key (the API keeps only its hash).
    pub admin_key: String,
    pub signer: TicketSigner,
}

/// Opens the database and loads (or makes) the keys in `data_dir`, which
/// exists and is this user's.
pub async fn open(args: &ServeArgs, data_dir: &Path) -> Result<Store> {
    let url = match &args.database_url {
        Some(u) => {
            Backend::of_url(u)?;
            u.clone()
        }
        None => {
            // SQLite's journal files take the database file's mode; the
            // file is made 0600 before SQLite opens it.
            let file = data_dir.join(db::SQLITE_FILE);
            for suffix in ["", "-wal", "-shm", "-journal"] {
                private_files::check_file(&PathBuf::from(format!("{}{suffix}", file.display())))?;
            }
            private_files::create_new(&file, b"")?;
            db::sqlite_url(data_dir)
        }
    };
    for name in ["node.key", tickets::KEY_FILE] {
        private_files::check_file(&data_dir.join(name))?;
    }
    let db = db::open(&url)
        .await
        .context("opening the database (--database-url)")?;
    let (key, generated) = admin_key::ensure(data_dir)?;
    if generated {
        println!(
            "Generated the admin key: {}",
            admin_key::path(data_dir).display()
        );
    }
    let signer = tickets::ensure_signer(&db, data_dir).await?;
    Ok(Store {
        db,
        admin_key: key,
        signer,
    })
}
