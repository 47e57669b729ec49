//! Any configuration or key file text: a value or an error naming what is wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match lbagent::Config::parse(&text) {
        Ok(_) => {}
        Err(e) => assert!(e.to_string().starts_with("config: "), "{e}"),
    }
    let _ = lbagent::keys::KeySet::parse(&text);
});
