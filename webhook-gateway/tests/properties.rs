//! Properties of everything the gateway reads from the internet before it
//! trusts it: no input makes the parsers panic, and nothing verifies
//! without the key.

use bytes::Bytes;
use payments_proto::stripe::{parse_checkout_session, parse_event};
use proptest::prelude::*;
use webhook_gateway::signature::{Verifier, WebhookSecret, parse_header, sign};

const SECRET: &str = "whsec_property_test_secret";
const NOW: i64 = 1_800_000_000;

fn verifier() -> Verifier {
    Verifier::new(&[WebhookSecret::new(SECRET).expect("secret")], 300)
}

/// Header-like strings: the header's own alphabet, so the interesting
/// shapes (`t=`, `v1=`, commas) come up often.
fn header_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[tv01=,a-f0-9 ]{0,200}").expect("regex")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_header_bytes_are_handled_without_panic(header in proptest::collection::vec(any::<u8>(), 0..300), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = verifier().verify(Some(&header), &body, NOW);
    }

    #[test]
    fn header_parsing_never_panics(header in header_like()) {
        let _ = parse_header(&header);
    }

    #[test]
    fn nothing_verifies_without_the_key(header in header_like(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(verifier().verify(Some(header.as_bytes()), &body, NOW).is_err());
    }

    #[test]
    fn a_signature_made_with_another_key_never_verifies(other in "whsec_[a-zA-Z0-9]{1,40}", body in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assume!(other != SECRET);
        let header = sign(&WebhookSecret::new(other).expect("secret"), NOW, &body);
        prop_assert!(verifier().verify(Some(header.as_bytes()), &body, NOW).is_err());
    }

    #[test]
    fn a_genuine_signature_stops_verifying_when_any_body_byte_changes(body in proptest::collection::vec(any::<u8>(), 1..300), index in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let header = sign(&WebhookSecret::new(SECRET).expect("secret"), NOW, &body);
        prop_assert!(verifier().verify(Some(header.as_bytes()), &body, NOW).is_ok());
        let mut changed = body.clone();
        let at = index.index(changed.len());
        changed[at] ^= flip;
        prop_assert!(verifier().verify(Some(header.as_bytes()), &changed, NOW).is_err());
    }

    #[test]
    fn event_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..500)) {
        let _ = parse_event(Bytes::from(body.clone()));
        let _ = parse_checkout_session(&body);
    }

    #[test]
    fn json_shaped_events_never_panic(id in ".{0,20}", kind in "(checkout\\.session\\.[a-z_]{0,12}|[a-z.]{0,20})", object in "\\{\\}|null|\\[\\]|\"x\"|1|\\{\"id\":\"cs_1\",\"metadata\":\\{\"a\":1\\}\\}|\\{\"payment_intent\":\\{\\}\\}") {
        let body = format!(r#"{{"object":"event","id":{},"type":{},"created":1,"livemode":false,"data":{{"object":{object}}}}}"#,
            serde_json::Value::String(id), serde_json::Value::String(kind));
        let _ = parse_event(Bytes::from(body));
    }
}
