//! The service's errors, and the one place they become gRPC statuses.

use sea_orm::DbErr;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke the contract; retrying it cannot help.
    #[error("invalid argument: {field} {problem}")]
    InvalidArgument { field: &'static str, problem: &'static str },
    /// The database failed. Transient from the caller's point of view: the
    /// transaction was rolled back and the same request may be retried.
    #[error("database error")]
    Database(#[from] DbErr),
}

impl Error {
    pub fn invalid(field: &'static str, problem: &'static str) -> Self {
        Self::InvalidArgument { field, problem }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::Database(source) => {
                tracing::error!(error = %source, debug = ?source, "database error; transaction rolled back");
                Status::unavailable("database unavailable; retry later")
            }
        }
    }
}
