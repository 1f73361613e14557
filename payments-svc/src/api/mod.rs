//! The `payments.v1.Payments` gRPC service: [`grpc`] validates requests,
//! calls fulfilment and converts back; [`auth`] checks the bearer token;
//! [`watch`] serves the change feed to watchers, caught-up ones from the
//! replica's one [`tail`] reader; [`page_token`] makes and checks
//! `ListPurchases` page tokens.

pub mod auth;
pub mod grpc;
pub mod page_token;
pub mod tail;
pub mod watch;
