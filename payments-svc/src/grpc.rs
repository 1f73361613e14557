//! The `payments.v1.Payments` service: validates requests at the boundary,
//! calls the domain, converts back. No business logic lives here.

use payments_proto::v1::payments_server::Payments;
use payments_proto::v1::{
    self as pb, HandleStripeEventResponse, StripeEvent, VerifyPurchaseRequest, VerifyPurchaseResponse,
    verify_purchase_request,
};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::db::entities::course_purchase::{self, PurchaseSource, PurchaseStatus};
use crate::error::Error;
use crate::verify::{self, Lookup};
use crate::webhook::{self, IncomingEvent, Outcome};

/// Event types whose payload must carry a typed Checkout Session.
const CHECKOUT_SESSION_EVENT_PREFIX: &str = "checkout.session.";

#[derive(Debug, Clone)]
pub struct PaymentsService {
    db: DatabaseConnection,
}

impl PaymentsService {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }
}

#[tonic::async_trait]
impl Payments for PaymentsService {
    async fn handle_stripe_event(
        &self,
        request: Request<StripeEvent>,
    ) -> Result<Response<HandleStripeEventResponse>, Status> {
        let event = incoming_event(request.into_inner())?;
        let outcome = webhook::handle_event(&self.db, &event).await.map_err(Error::from)?;
        tracing::info!(
            event_id = %event.id,
            event_type = %event.event_type,
            session_id = event.session.as_ref().map(|s| s.id.as_str()),
            outcome = outcome.as_str(),
            "stripe event handled"
        );
        Ok(Response::new(handle_response(outcome)))
    }

    async fn verify_purchase(
        &self,
        request: Request<VerifyPurchaseRequest>,
    ) -> Result<Response<VerifyPurchaseResponse>, Status> {
        let lookup = lookup(request.into_inner())?;
        let purchase = verify::find_purchase(&self.db, &lookup).await.map_err(Error::from)?;
        Ok(Response::new(verify_response(purchase)))
    }
}

fn incoming_event(event: StripeEvent) -> Result<IncomingEvent, Error> {
    if event.id.is_empty() {
        return Err(Error::invalid("id", "is empty"));
    }
    if event.r#type.is_empty() {
        return Err(Error::invalid("type", "is empty"));
    }
    let payload = String::from_utf8(event.raw_payload.to_vec())
        .map_err(|_| Error::invalid("raw_payload", "is not UTF-8"))?;
    if payload.is_empty() {
        return Err(Error::invalid("raw_payload", "is empty"));
    }
    let session = event.checkout_session().cloned();
    if event.r#type.starts_with(CHECKOUT_SESSION_EVENT_PREFIX) {
        match &session {
            None => {
                return Err(Error::invalid("checkout_session", "is required for checkout.session.* events"));
            }
            Some(s) if s.id.is_empty() => return Err(Error::invalid("checkout_session.id", "is empty")),
            Some(_) => {}
        }
    }
    Ok(IncomingEvent {
        id: event.id,
        event_type: event.r#type,
        created: event.created,
        livemode: event.livemode,
        api_version: event.api_version,
        session,
        payload,
    })
}

fn handle_response(outcome: Outcome) -> HandleStripeEventResponse {
    let (outcome, detail) = match outcome {
        Outcome::Processed => (pb::Outcome::Processed, String::new()),
        Outcome::Duplicate => (pb::Outcome::Duplicate, String::new()),
        Outcome::Ignored { reason } => (pb::Outcome::Ignored, reason.message),
        Outcome::Failed { error } => (pb::Outcome::Failed, error.message),
    };
    HandleStripeEventResponse { outcome: outcome.into(), detail }
}

fn lookup(request: VerifyPurchaseRequest) -> Result<Lookup, Error> {
    match request.lookup {
        Some(verify_purchase_request::Lookup::CheckoutSessionId(id)) if !id.is_empty() => {
            Ok(Lookup::CheckoutSession(id))
        }
        Some(verify_purchase_request::Lookup::CheckoutSessionId(_)) => {
            Err(Error::invalid("checkout_session_id", "is empty"))
        }
        Some(verify_purchase_request::Lookup::UserCourse(uc)) if uc.user_id.is_empty() => {
            Err(Error::invalid("user_course.user_id", "is empty"))
        }
        Some(verify_purchase_request::Lookup::UserCourse(uc)) if uc.course_id.is_empty() => {
            Err(Error::invalid("user_course.course_id", "is empty"))
        }
        Some(verify_purchase_request::Lookup::UserCourse(uc)) => {
            Ok(Lookup::UserCourse { user_id: uc.user_id, course_id: uc.course_id })
        }
        None => Err(Error::invalid("lookup", "is required")),
    }
}

fn verify_response(purchase: Option<course_purchase::Model>) -> VerifyPurchaseResponse {
    match purchase {
        None => VerifyPurchaseResponse { status: pb::PurchaseStatus::NotFound.into(), purchase: None },
        Some(purchase) => {
            let purchase = purchase_message(purchase);
            VerifyPurchaseResponse { status: purchase.status, purchase: Some(purchase) }
        }
    }
}

fn purchase_message(purchase: course_purchase::Model) -> pb::Purchase {
    let status = match purchase.status {
        PurchaseStatus::Paid => pb::PurchaseStatus::Paid,
    };
    let source = match purchase.source {
        PurchaseSource::Webhook => pb::PurchaseSource::Webhook,
    };
    pb::Purchase {
        user_id: purchase.user_id,
        course_id: purchase.course_id,
        checkout_session_id: purchase.stripe_checkout_session_id,
        payment_intent_id: purchase.stripe_payment_intent_id,
        amount_total: purchase.amount_total,
        currency: purchase.currency,
        status: status.into(),
        source: source.into(),
        created_at: Some(timestamp(purchase.created_at)),
        updated_at: Some(timestamp(purchase.updated_at)),
    }
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
