//! The configuration file: any text is a configuration or an error that
//! names the key, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = castellan::config::Config::parse(
            text,
            std::path::Path::new("/etc/castellan/castellan.toml"),
        );
    }
});
