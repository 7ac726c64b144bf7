//! The admin API's JSON bodies: a deployment, a namespace, a token. Decoding
//! and validation never panic, and a valid deployment survives the round
//! trip through the API's view of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp_core::{
    FunctionSpec,
    api::FunctionDeployment,
    spec::Observed,
    tenancy::{NewNamespace, NewToken},
};

fuzz_target!(|body: &[u8]| {
    if let Ok(deployment) = serde_json::from_slice::<FunctionDeployment>(body)
        && let Ok(spec) = FunctionSpec::from_deployment(deployment)
    {
        let shown = spec.status(Observed::default()).deployment;
        let again = FunctionSpec::from_deployment(shown).expect("a shown spec is valid");
        assert_eq!(again, spec);
    }
    let _ = serde_json::from_slice::<NewNamespace>(body);
    let _ = serde_json::from_slice::<NewToken>(body);
});
