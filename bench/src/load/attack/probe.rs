//! A legitimate login in the middle of an attack: the bench's own client
//! logs in from 127.0.0.1 (the attackers use [`super::dial::ATTACKER_SOURCE`])
//! as the system's client does, and the time to its LoginResp is recorded.

use super::Target;
use crate::client::Client;
use serde::Serialize;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Limit on each step of the probe's login.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the legitimate login succeeded, and how fast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoginCheck {
    /// It logged in.
    #[serde(rename = "login_ok")]
    pub ok: bool,
    /// Connect to LoginResp, when it logged in.
    #[serde(rename = "login_ms")]
    pub ms: Option<f64>,
    /// Why it did not.
    #[serde(rename = "login_error")]
    pub error: Option<String>,
}

/// A login under way on a thread of its own.
pub struct LoginProbe(Result<JoinHandle<LoginCheck>, String>);

impl LoginProbe {
    /// Logs in to `target` after `delay`.
    pub fn start(target: &Target, delay: Duration) -> LoginProbe {
        let opts = target.client_opts(PROBE_TIMEOUT);
        let t = std::thread::Builder::new()
            .name("login-probe".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                std::thread::sleep(delay);
                let t0 = Instant::now();
                match Client::login(opts) {
                    Ok(c) => {
                        let ms = t0.elapsed().as_secs_f64() * 1e3;
                        c.kill();
                        LoginCheck {
                            ok: true,
                            ms: Some(ms),
                            error: None,
                        }
                    }
                    Err(e) => LoginCheck {
                        ok: false,
                        ms: None,
                        error: Some(e.to_string()),
                    },
                }
            })
            .map_err(|e| e.to_string());
        LoginProbe(t)
    }

    /// Waits for the login's outcome (bounded by [`PROBE_TIMEOUT`]).
    pub fn finish(self) -> LoginCheck {
        match self.0 {
            Ok(t) => t.join().unwrap_or_else(|_| LoginCheck {
                error: Some("the probe's thread panicked".into()),
                ..LoginCheck::default()
            }),
            Err(e) => LoginCheck {
                error: Some(format!("no thread for the probe: {e}")),
                ..LoginCheck::default()
            },
        }
    }
}
