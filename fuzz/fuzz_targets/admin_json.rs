//! The admin API's JSON bodies: a deployment, a namespace, a token. Decoding
//! and validation never panic, a valid deployment sets no variable that
//! changes how programs are loaded, its broker triggers pass the namespace
//! check only under the namespace's prefix, and it survives the round trip
//! through the API's view of it.
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
        assert!(
            !spec
                .env
                .keys()
                .any(|name| wisp_core::spec::is_loader_variable(name)),
            "a loader variable was accepted"
        );
        // A trigger a namespace token may declare subscribes only under the
        // namespace's prefix and names only the namespace's own consumers.
        let scope = wisp_core::events::TriggerScope::default();
        for trigger in &spec.triggers {
            if scope.check(&spec.namespace, trigger).is_err() {
                continue;
            }
            match trigger {
                wisp_core::Trigger::Nats(nats) => {
                    assert!(
                        nats.subject
                            .starts_with(&scope.nats_prefix(&spec.namespace))
                    );
                    let consumer = nats.jetstream.as_ref().and_then(|(_, c)| c.as_deref());
                    for name in [consumer, nats.queue_group.as_deref()]
                        .into_iter()
                        .flatten()
                    {
                        assert!(wisp_core::events::owns_name(&spec.namespace, name));
                    }
                }
                wisp_core::Trigger::Mqtt(topic) => {
                    assert!(topic.starts_with(&scope.mqtt_prefix(&spec.namespace)));
                }
                wisp_core::Trigger::Cron(_) => {}
            }
        }
        if let Some(route) = &spec.route {
            assert!(route.overlaps(route), "a route shares its own path");
        }
        let shown = spec.status(Observed::default()).deployment;
        let again = FunctionSpec::from_deployment(shown).expect("a shown spec is valid");
        assert_eq!(again, spec);
    }
    let _ = serde_json::from_slice::<NewNamespace>(body);
    let _ = serde_json::from_slice::<NewToken>(body);
});
