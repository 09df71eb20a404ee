#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| p2pshare::peer::console::fuzz_parse(data));
