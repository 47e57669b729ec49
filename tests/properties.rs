//! Property tests: encode/decode round trips, the text line's promises, and parsers that never
//! panic on any input.

use proptest::prelude::*;

use lbagent::keys::KeySet;
use lbagent::proto::auth;
use lbagent::proto::wire::{self, Reply, Request, StatusFields};
use lbagent::state::{Reason, State};
use lbagent::status::{Status, Text};

fn any_state() -> impl Strategy<Value = State> {
    (0u8..7).prop_map(|v| State::from_u8(v).unwrap())
}

fn any_status() -> impl Strategy<Value = Status> {
    (
        any_state(),
        0u8..6,
        0u8..=100,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        ".{0,300}",
    )
        .prop_map(
            |(state, reason, weight_pct, in_use, capacity, generation, since_ms, message)| Status {
                state,
                reason: Reason::from_u8(reason).unwrap(),
                weight_pct,
                in_use,
                capacity,
                generation,
                since_ms,
                message: Text::from_reason(message.as_bytes()),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn probe_round_trip(nonce: u64, service in "[ -~]{0,64}", len in 0usize..600) {
        let mut out = [0u8; wire::PROBE_MAX_LEN];
        let n = wire::encode_probe(nonce, service.as_bytes(), len, &mut out);
        prop_assert!((wire::PROBE_MIN_LEN..=wire::PROBE_MAX_LEN).contains(&n));
        match wire::decode_request(&out[..n]) {
            Ok(Request::Probe(p)) => {
                prop_assert_eq!(p.nonce, nonce);
                prop_assert_eq!(p.service, service.as_bytes());
                prop_assert_eq!(p.len, n);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn status_round_trip_never_exceeds_its_room(status in any_status(), nonce: u64, id: u64, max in 45usize..600) {
        let fields = StatusFields {
            flags: 0, nonce, instance_id: id, generation: status.generation,
            state: status.state as u8, reason: status.reason as u8,
            weight_pct: u16::from(status.weight_pct), since_ms: status.since_ms,
            in_use: status.in_use, capacity: status.capacity, message: status.message.as_bytes(),
        };
        let mut out = [0u8; wire::PROBE_MAX_LEN];
        let n = wire::encode_status(&fields, max, &mut out).unwrap();
        prop_assert!(n <= max.min(wire::PROBE_MAX_LEN));
        match wire::decode_reply(&out[..n]).unwrap() {
            Reply::Status(s) => {
                prop_assert!(std::str::from_utf8(s.message).is_ok());
                prop_assert!(status.message.as_bytes().starts_with(s.message));
                prop_assert_eq!(StatusFields { message: status.message.as_bytes(), ..s }, fields);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn text_line_promises(status in any_status(), max in 0usize..600) {
        let mut out = [0u8; 512];
        let n = lbagent::proto::text::write_reply(&status, max, &mut out);
        let line = &out[..n];
        prop_assert!(n <= max && n <= lbagent::proto::text::MAX_LINE);
        prop_assert!(line.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\n'));
        if max >= 1 {
            prop_assert_eq!(line.starts_with(b"u"), status.is_serving());
        }
        if max >= 2 {
            prop_assert_eq!(line.starts_with(b"up"), status.is_serving());
        }
        if max >= 9 {
            prop_assert!(line.ends_with(b"\n"));
            prop_assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        }
    }

    #[test]
    fn decoders_never_panic(datagram in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = wire::decode_request(&datagram);
        let _ = wire::decode_reply(&datagram);
        let _ = lbagent::proto::text::parse_request(&datagram);
        let _ = lbagent::client::read_answer(&datagram, 1, std::time::Duration::ZERO);
        let mut lbap = b"LBAP".to_vec();
        lbap.extend_from_slice(&datagram);
        let _ = wire::decode_request(&lbap);
        let _ = wire::decode_reply(&lbap);
    }

    #[test]
    fn http_answers_are_well_formed(
        method in "(GET|HEAD|POST|get|[A-Z]{1,8})",
        path in "/(health(/(game|chat|nope|[!-~]{0,70}))?|[!-~]{0,20})",
        accept in "(application/json|text/plain|\\*/\\*|application/json;q=0|[ -~]{0,30})",
        extra in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n");
        let code = lbagent::fuzzing::answer_http(request.as_bytes(), false);
        prop_assert!(code.is_some(), "a complete request is answered: {request:?}");
        // Whatever follows a complete head changes nothing; arbitrary bytes never panic.
        let mut longer = request.into_bytes();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(lbagent::fuzzing::answer_http(&longer, true), code);
        let _ = lbagent::fuzzing::answer_http(&extra, false);
        let _ = lbagent::fuzzing::answer_http(&extra, true);
    }

    #[test]
    fn config_parser_never_panics(text in ".{0,200}") {
        let _ = lbagent::Config::parse(&text);
    }

    #[test]
    fn config_errors_name_the_key(key in "[a-z_]{1,12}", value in "[!-\"$-:<>-~]{0,20}") {
        if let Err(e) = lbagent::Config::parse(&format!("{key}={value}")) {
            prop_assert!(e.to_string().contains(&format!("\"{key}\"")), "{}", e);
        }
    }

    #[test]
    fn seal_open_round_trip_and_tamper(body in proptest::collection::vec(any::<u8>(), 16..200), ts: u64, flip in any::<prop::sample::Index>()) {
        let keys = KeySet::parse("3 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").unwrap();
        let key = keys.first().unwrap();
        let mut buf = [0u8; 300];
        buf[..body.len()].copy_from_slice(&body);
        let n = auth::seal(key, &mut buf, body.len(), ts);
        let v = auth::open(&buf[..n], |id| keys.get(id)).unwrap();
        prop_assert_eq!((v.key_id, v.timestamp_ms), (3, ts));
        let at = flip.index(n);
        buf[at] ^= 0x80;
        prop_assert!(auth::open(&buf[..n], |id| keys.get(id)).is_err());
    }
}
