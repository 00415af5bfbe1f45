//! The control plane's one error type: every library module returns it, and
//! the API layer turns each variant into an HTTP status and a JSON body.

/// Why a control-plane operation failed. `Display` is the message a client
/// or operator reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong; `field` names the offending field when one is to blame.
    #[error("{message}")]
    Invalid {
        /// Field path, e.g. `scope.port_pool`.
        field: Option<String>,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing existed but can no longer be used (expired, revoked, exhausted).
    #[error("{0}")]
    Gone(String),
    /// The request is well formed but not allowed (403), naming the field
    /// to blame when there is one: e.g. a route for a domain whose
    /// ownership is not verified.
    #[error("{message}")]
    Refused {
        /// Field path.
        field: Option<String>,
        /// Why, and what would allow it.
        message: String,
    },
    /// The thing to create exists already.
    #[error("{0}")]
    Conflict(String),
    /// The change was recorded but is not in force: the data plane did not
    /// apply the policy it was given (stopped, wedged, or refusing tables).
    #[error("{0}")]
    Unavailable(String),
    /// The database failed; not the caller's fault.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Anything else that is not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A 400-class error naming `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
