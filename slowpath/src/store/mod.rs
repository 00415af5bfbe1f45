//! Where state is kept: the database ([`db`]: SQLite or PostgreSQL, one
//! set of migrations), owner-only files for secrets and policy
//! ([`private_files`]), and the admin key ([`admin_key`]); [`changes`]
//! tells the control planes sharing a PostgreSQL database what changed.

pub mod admin_key;
pub mod changes;
pub mod db;
pub mod private_files;
