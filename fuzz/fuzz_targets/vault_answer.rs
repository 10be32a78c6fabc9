//! Every parser of Vault's answers (sign, issuer, transit sign and keys,
//! login), fed a hostile or broken Vault's body.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    castellan_vault::fuzz_answer(data);
});
