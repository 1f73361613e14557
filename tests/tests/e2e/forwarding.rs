//! The gateway forwarding many events to a call: events that arrive while
//! a call is in flight travel together, and each still gets its own answer.

use std::time::Duration;

use bytes::Bytes;
use e2e::fixture;
use payments_proto::stripe::parse_event;
use payments_proto::v1::{HandleStripeEventsRequest, Outcome, StripeEvent, stripe_event_result};
use tonic::Code;

use crate::helpers::{
    Stack, StackOptions, TestDb, metric, on_both_databases, outcomes_around_one_event_sent_twice,
};

const PAID: &str = "checkout_session_completed_paid.json";

on_both_databases!(events_arriving_while_a_call_is_in_flight_travel_together_each_with_its_own_answer);
async fn events_arriving_while_a_call_is_in_flight_travel_together_each_with_its_own_answer(db: TestDb) {
    // One call at a time, held by payments-svc for a moment: whatever
    // arrives meanwhile queues in the gateway and goes in the next call.
    let options = StackOptions {
        payments: Some(|settings| settings.batching.max_wait = Duration::from_millis(300)),
        gateway: Some(|settings| settings.forwarding.max_calls = 1),
        ..Default::default()
    };
    let stack = Stack::start_with(db, options).await;
    let burst: Vec<Bytes> =
        [PAID, "checkout_session_completed_no_metadata.json", "charge_succeeded.json", PAID]
            .iter()
            .map(|name| fixture(name).expect("fixture"))
            .collect();

    let answers = stack.deliver_concurrently(&burst).await;

    let outcomes = outcomes_around_one_event_sent_twice(&answers);
    assert_eq!(outcomes, ["failed", "ignored"]);
    let metrics = stack.gateway_metrics().await;
    assert_eq!(metric(&metrics, "gateway_forwarded_events_per_call_sum"), 4.0);
    let calls = metric(&metrics, "gateway_forwarded_events_per_call_count");
    assert!(calls <= 2.0, "four events in {calls} calls: the ones that waited should share one");
    assert_eq!(stack.purchases().await.len(), 1);
    assert_eq!(stack.events().await.len(), 3);
    stack.shutdown().await;
}

on_both_databases!(one_invalid_event_in_a_call_is_refused_alone);
async fn one_invalid_event_in_a_call_is_refused_alone(db: TestDb) {
    let stack = Stack::start(db).await;
    let paid = parse_event(fixture(PAID).expect("fixture")).expect("parses");
    // Nameless in its payload, which is what payments-svc reads.
    let body = fixture(PAID).expect("fixture");
    let nameless_body =
        e2e::replace_once(&body, &format!("\"id\": \"{}\"", paid.id), "\"id\": \"\"").expect("id");
    let nameless = StripeEvent { id: String::new(), raw_payload: nameless_body, ..paid.clone() };
    let request =
        HandleStripeEventsRequest { events: vec![paid.clone(), nameless, paid], traceparents: Vec::new() };

    let results = stack.grpc().await.handle_stripe_events(request).await.expect("call").into_inner().results;

    let answers: Vec<_> = results.into_iter().map(|r| r.result.expect("a result per event")).collect();
    let [first, second, third] = answers.try_into().expect("three results");
    let outcome_of = |result: stripe_event_result::Result| match result {
        stripe_event_result::Result::Handled(handled) => handled.outcome(),
        stripe_event_result::Result::Error(error) => panic!("unexpected error {error:?}"),
    };
    assert_eq!(outcome_of(first), Outcome::Processed);
    match second {
        stripe_event_result::Result::Error(error) => {
            assert_eq!(Code::from(error.code), Code::InvalidArgument);
            assert_eq!(
                error.message,
                "invalid argument: raw_payload is not a Stripe event this service reads"
            );
        }
        other => panic!("the nameless event was accepted: {other:?}"),
    }
    assert_eq!(outcome_of(third), Outcome::Duplicate);
    assert_eq!(stack.events().await.len(), 1);
    assert_eq!(stack.purchases().await.len(), 1);
    stack.shutdown().await;
}

on_both_databases!(an_event_whose_typed_fields_differ_from_its_raw_payload_is_refused_and_nothing_is_written);
async fn an_event_whose_typed_fields_differ_from_its_raw_payload_is_refused_and_nothing_is_written(
    db: TestDb,
) {
    use payments_proto::v1::stripe_event::Object;
    let stack = Stack::start(db).await;
    let mut client = stack.grpc().await;
    let paid = parse_event(fixture(PAID).expect("fixture")).expect("parses");
    let mut someone_else = paid.clone();
    if let Some(Object::CheckoutSession(session)) = &mut someone_else.object {
        session.metadata.insert("userId".into(), "u_someone_else".into());
    }
    let later = StripeEvent { created: paid.created + 60, ..paid.clone() };
    let unreadable = StripeEvent { raw_payload: Bytes::from_static(b"{\"id\": 1}"), ..paid.clone() };

    let mut refused = Vec::new();
    for event in [someone_else, later, unreadable] {
        refused.push(client.handle_stripe_event(event).await.expect_err("refused"));
    }
    let nothing_written = (stack.events().await.len(), stack.purchases().await.len());
    let only_the_payload = StripeEvent { raw_payload: paid.raw_payload.clone(), ..Default::default() };
    let applied = client.handle_stripe_event(paid).await.expect("the agreeing event");
    let again = client.handle_stripe_event(only_the_payload).await.expect("the payload alone");

    assert!(refused.iter().all(|status| status.code() == Code::InvalidArgument), "{refused:?}");
    let messages: Vec<&str> = refused.iter().map(|status| status.message()).collect();
    assert_eq!(
        messages,
        [
            "invalid argument: checkout_session.metadata is not what raw_payload says",
            "invalid argument: created is not what raw_payload says",
            "invalid argument: raw_payload is not a Stripe event this service reads",
        ]
    );
    assert_eq!(nothing_written, (0, 0));
    assert_eq!(applied.into_inner().outcome(), Outcome::Processed);
    assert_eq!(again.into_inner().outcome(), Outcome::Duplicate, "the same event, read from its payload");
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 1);
    assert_ne!(purchases[0].user_id, "u_someone_else");
    stack.shutdown().await;
}
