//! What castellan does with an untrusted bearer token itself: routing by
//! issuer, the log description, the header, claims to a caller.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    castellan::authn::fuzz_jwt(data);
});
