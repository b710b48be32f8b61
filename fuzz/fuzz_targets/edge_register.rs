#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(t) = portcullis_fuzz_targets::target("edge_register") {
        (t.run)(data);
    }
});
