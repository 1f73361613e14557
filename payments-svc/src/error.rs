//! The service's errors, and the one place they become gRPC statuses.

use payments_domain::event::Invalid;
use sea_orm::DbErr;
use tonic::Status;

/// What failed, so that callers and operators can tell a bad request from
/// a database that is down from a service that is stopping.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke the contract; retrying it cannot help.
    #[error("invalid argument: {field} {problem}")]
    InvalidArgument { field: &'static str, problem: &'static str },
    /// The database failed. Transient from the caller's point of view: the
    /// transaction was rolled back and the same request may be retried.
    #[error("database error")]
    Database(#[from] DbErr),
    /// The database's connection was lost or its server cannot take writes
    /// now (logged where it happened); the work was not done and may be
    /// retried.
    #[error("database unavailable")]
    Unavailable,
    /// The service is shutting down and did not take the work; another
    /// replica, or this one after its restart, will.
    #[error("shutting down")]
    Stopping,
}

impl Error {
    pub fn invalid(field: &'static str, problem: &'static str) -> Self {
        Self::InvalidArgument { field, problem }
    }
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Self {
        Self::InvalidArgument { field: invalid.field, problem: invalid.problem }
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
            Error::Unavailable => Status::unavailable("database unavailable; retry later"),
            Error::Stopping => Status::unavailable("shutting down; retry later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_database_is_reported_as_the_database() {
        let stopping = Status::from(Error::Stopping);
        assert_eq!(stopping.code(), tonic::Code::Unavailable);
        assert!(!stopping.message().contains("database"), "{}", stopping.message());

        let down = Status::from(Error::Database(DbErr::Custom("connection reset".into())));
        assert_eq!(down.message(), "database unavailable; retry later", "no internals reach the caller");
    }
}
