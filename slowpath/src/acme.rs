//! Certificates for routed hostnames, by ACME (RFC 8555) with
//! `instant-acme`: one order per hostname, answered by HTTP-01.
//!
//! The answer to a challenge goes into the policy table
//! ([`Publisher::set_acme_challenge`]) and the task waits until the
//! fastpath's workers hold it; the fastpath answers the CA on
//! `vhostHTTPPort` from its table and never calls the slowpath. The new
//! certificate (a fresh P-256 key per issue, the key never leaves this
//! host but for the owner-only policy directory) is stored
//! ([`certs::issued`]) and published with the edge.
//!
//! The account key is kept in the database (`meta`, per directory URL),
//! so a restart reuses the account. Each hostname's order runs under a
//! time limit and alone: a CA that refuses or does not answer fails that
//! hostname (recorded, audited, retried with backoff: [`certs::failed`])
//! and the others go on. Renewal is at two thirds of the lifetime.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::credentials::sha256_hex;
use crate::domain::certs;
use crate::error::{Error, Result};
use crate::policy::publish::Publisher;
use crate::store::db::{self, Db};

/// How one hostname's order may take at most.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and how to ask for certificates.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The directory URL (Let's Encrypt's, its staging one, or your own
    /// CA's).
    pub directory: String,
    /// A root certificate (PEM) for the ACME server's own HTTPS, when it
    /// is not publicly trusted (a test CA such as pebble).
    pub ca_file: Option<PathBuf>,
    /// `mailto:` contact for the account (optional).
    pub contact: Option<String>,
    /// How often due certificates are looked for (a route change wakes
    /// the task at once).
    pub interval: Duration,
}

/// What the task has done, for `/healthz` and the stats.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AcmeStatus {
    /// The directory URL.
    pub directory: String,
    /// The account is registered.
    pub account: bool,
    /// Certificates issued since start.
    pub issued: u64,
    /// Orders failed since start.
    pub failed: u64,
    /// The last failure, with its hostname.
    pub last_error: Option<String>,
    /// The last pass, unix ms.
    pub last_pass_ms: i64,
}

/// The running task's handle.
#[derive(Clone)]
pub struct Acme {
    /// Shared status.
    pub status: Arc<Mutex<AcmeStatus>>,
    wake: Arc<Notify>,
}

impl Acme {
    /// Look for due certificates now (a route was added, or a renewal
    /// asked for).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The status, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        serde_json::to_value(s).unwrap_or_default()
    }
}

/// Start the task.
pub fn spawn(cfg: AcmeConfig, db: Db, publisher: Arc<Publisher>) -> Acme {
    let acme = Acme {
        status: Arc::new(Mutex::new(AcmeStatus {
            directory: cfg.directory.clone(),
            ..Default::default()
        })),
        wake: Arc::new(Notify::new()),
    };
    let handle = acme.clone();
    tokio::spawn(async move {
        let mut account: Option<Account> = None;
        loop {
            if account.is_none() {
                match open_account(&cfg, &db).await {
                    Ok(a) => {
                        set(&handle, |s| s.account = true);
                        account = Some(a);
                    }
                    Err(e) => {
                        tracing::warn!(directory = %cfg.directory, error = %e, "ACME account not ready; trying again");
                        set(&handle, |s| s.last_error = Some(format!("account: {e}")));
                    }
                }
            }
            if let Some(acct) = &account {
                pass(&handle, acct, &db, &publisher).await;
            }
            tokio::select! {
                _ = handle.wake.notified() => {}
                _ = tokio::time::sleep(cfg.interval) => {}
            }
        }
    });
    acme
}

fn set(acme: &Acme, f: impl FnOnce(&mut AcmeStatus)) {
    if let Ok(mut s) = acme.status.lock() {
        f(&mut s);
    }
}

/// One pass: every due hostname, one at a time.
async fn pass(acme: &Acme, account: &Account, db: &Db, publisher: &Arc<Publisher>) {
    let due = match certs::due(db, now_ms()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list due certificates");
            return;
        }
    };
    set(acme, |s| s.last_pass_ms = now_ms());
    for host in due.iter() {
        let result = tokio::time::timeout(ORDER_TIMEOUT, issue(account, host, publisher)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no certificate within {} s",
                ORDER_TIMEOUT.as_secs()
            )),
        };
        match result {
            Ok((chain, key, validity)) => {
                if let Err(e) = certs::issued(db, host, &chain, &key, validity).await {
                    tracing::warn!(hostname = %host, error = %e, "cannot store the certificate");
                    continue;
                }
                tracing::info!(hostname = %host, not_after = validity.1, "certificate issued");
                set(acme, |s| s.issued += 1);
                if let Err(e) = publisher.publish_edge().await {
                    tracing::warn!(error = %e, "certificate stored but not published");
                }
            }
            Err(why) => {
                tracing::warn!(hostname = %host, reason = %why, "certificate order failed; retried later");
                set(acme, |s| {
                    s.failed += 1;
                    s.last_error = Some(format!("{host}: {why}"));
                });
                if let Err(e) = certs::failed(db, host, &why).await {
                    tracing::warn!(hostname = %host, error = %e, "cannot record the failure");
                }
            }
        }
    }
}

/// The account for the configured directory: restored from the database,
/// or registered and kept.
async fn open_account(cfg: &AcmeConfig, db: &Db) -> Result<Account> {
    let key = format!("acme_account:{}", &sha256_hex(&cfg.directory)[..16]);
    let builder = || match &cfg.ca_file {
        Some(path) => Account::builder_with_root(path),
        None => Account::builder(),
    };
    let acme_err = |e: instant_acme::Error| Error::Internal(format!("ACME: {e}"));
    if let Some(saved) = db::meta_get(db, &key).await? {
        let creds: AccountCredentials = serde_json::from_str(&saved)
            .map_err(|e| Error::Internal(format!("stored ACME account: {e}")))?;
        return builder()
            .map_err(acme_err)?
            .from_credentials(creds)
            .await
            .map_err(acme_err);
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()
        .map_err(acme_err)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await
        .map_err(acme_err)?;
    let saved =
        serde_json::to_string(&creds).map_err(|e| Error::Internal(format!("ACME account: {e}")))?;
    db::meta_set(db, &key, &saved).await?;
    crate::domain::edge::audit(
        db,
        "edge.acme.account",
        serde_json::json!({ "directory": cfg.directory, "id": account.id() }),
    )
    .await?;
    Ok(account)
}

/// Order a certificate for `host`: (chain PEM, key PEM, validity in ms).
async fn issue(
    account: &Account,
    host: &str,
    publisher: &Arc<Publisher>,
) -> Result<(String, String, (i64, i64)), String> {
    let ids = [Identifier::Dns(host.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Vec::new();
    let answered = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or("the CA offers no http-01 challenge")?;
            let token = challenge.token.clone();
            let answer = challenge.key_authorization().as_str().to_owned();
            publisher.set_acme_challenge(&token, Some(&answer));
            tokens.push(token);
            // The CA asks only once the fastpath can answer.
            publisher
                .sync_edge()
                .await
                .map_err(|e| format!("publishing the challenge: {e}"))?;
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        Ok::<(), String>(())
    }
    .await;
    let result = async {
        answered?;
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default();
            return Err(format!("order is {status:?} {why}"));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
        let csr = rcgen::CertificateParams::new(vec![host.to_owned()])
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| format!("CSR: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let (ders, _) = certs::parse_pem(&chain, &key.serialize_pem())?;
        let validity =
            proto::certstore::validity(&ders[0]).ok_or("unreadable certificate validity")?;
        Ok((chain, key.serialize_pem(), validity))
    }
    .await;
    // The answers are published only while their order runs.
    for t in &tokens {
        publisher.set_acme_challenge(t, None);
    }
    if !tokens.is_empty() {
        if let Err(e) = publisher.publish_edge().await {
            tracing::debug!(error = %e, "challenge answers not withdrawn yet");
        }
    }
    result
}
