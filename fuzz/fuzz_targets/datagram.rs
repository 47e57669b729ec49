//! Any datagram: the agent's decision (at most one answer, never longer than the request),
//! and every decoder, never panic. The same bytes as an HTTP request: a well-formed answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lbagent::fuzzing::answer_datagram(data);
    let _ = lbagent::fuzzing::answer_http(data, false);
    let _ = lbagent::fuzzing::answer_http(data, true);
    let _ = lbagent::proto::wire::decode_request(data);
    let _ = lbagent::proto::wire::decode_reply(data);
    let _ = lbagent::proto::text::parse_request(data);
    let _ = lbagent::client::read_answer(data, 1, std::time::Duration::ZERO);
});
