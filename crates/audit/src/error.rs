//! Errors of the audit crate.

/// Why the audit log could not be opened, configured or used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A signing or public key could not be read or parsed.
    #[error("audit key: {0}")]
    Key(String),
    /// The configuration is inconsistent.
    #[error("audit configuration: {0}")]
    Config(String),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The sinks hold chains for this node that do not agree; the log refuses to guess which is
    /// right and does not start.
    #[error("audit sinks disagree: {0}")]
    Diverged(String),
    /// The log was shut down with records that no sink took.
    #[error("audit log shut down with {unwritten} record(s) no sink could take: {reason}")]
    Unwritten {
        /// How many records were lost.
        unwritten: u64,
        /// The last sink error.
        reason: String,
    },
}

/// A sink operation failed. The message names the sink and says what failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// Which sink (`sqlite /var/lib/portcullis/audit.db`, `jsonl /var/log/portcullis`, ...).
    pub sink: String,
    /// What failed.
    pub message: String,
}

impl SinkError {
    /// An error of `sink`.
    pub fn new(sink: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            sink: sink.into(),
            message: message.into(),
        }
    }
}
