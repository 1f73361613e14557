//! End-to-end tests: the real webhook-gateway and payments-svc on ephemeral
//! ports, talking HTTP and gRPC, on SQLite and on PostgreSQL.

use e2e::{fake_stripe, stripe_account};

mod containers;
mod db_proxy;
mod deploy_steps;
mod failover;
mod faults;
mod feed;
mod feed_sharing;
mod final_answers;
mod forwarding;
mod group_commit;
mod hardening;
mod helpers;
mod lifecycle;
mod limits;
mod manifests;
mod operations;
mod paths;
mod plans;
mod podman;
mod processes;
mod refunds;
mod replicas;
mod reversals;
mod startup;
mod success_page;
mod sync;
mod traces;
mod verify;
mod verify_flow;
mod webhook;
