//! `decide_all` against an exact model: a route of three policies, two on
//! the connection's item (a count and a byte quota) and one on the user's,
//! under any traffic, allows exactly when every policy's bucket allows, and
//! a refused action changes no bucket.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use ratelimiter::gcra::{Nanos, Outcome};
use ratelimiter::{Builder, Config, FakeClock, MemoryStore, PolicyId, Request};

const START_SECS: u64 = 1_700_000_000;

/// (count, period in seconds) of each of the three policies.
type Limits = [(u32, u64); 3];

/// One action: (gap in ms since the last, connection 0..3, user 0..2, size).
type Action = (u64, u8, u8, u32);

fn route() -> impl Strategy<Value = (Limits, Vec<Action>)> {
    let limit = (1u32..=6, 1u64..=60);
    ([limit.clone(), (10u32..=200, 1u64..=60), limit]).prop_flat_map(|limits| {
        let max_size = limits[1].0;
        let action = (0u64..=3_000, 0u8..3, 0u8..2, 1..=max_size);
        (Just(limits), prop::collection::vec(action, 1..80))
    })
}

fn config(limits: &Limits) -> Config {
    let [(c, cp), (b, bp), (u, up)] = *limits;
    let text = format!(
        "[policy.messages]\nkey = \"connection\"\nlimits = [\"{c}/{cp}s\"]\n\
         [policy.message_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"{b}/{bp}s\"]\n\
         [policy.user_messages]\nkey = \"user\"\nlimits = [\"{u}/{up}s\"]\n"
    );
    Config::from_file_text("route.toml", &text, |_| None).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_route_is_all_or_nothing_and_exact((limits, actions) in route(), cache in any::<bool>()) {
        let config = config(&limits);
        let clock = FakeClock::at_secs(START_SECS);
        let service = Builder::from_config(config.clone())
            .clock(clock.clone())
            .deny_cache(if cache { 10_000 } else { 0 })
            .build(MemoryStore::new());
        let ids: [PolicyId; 3] = ["messages", "message_bytes", "user_messages"]
            .map(|name| service.policy_id(name).unwrap());
        let quotas: Vec<_> = ids
            .iter()
            .map(|&id| *config.policies[id].limits()[0].quota())
            .collect();
        // The model: one TAT per (policy, identifier).
        let mut model: HashMap<(usize, String), Nanos> = HashMap::new();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (gap_ms, connection, user, size) in actions {
            clock.advance(Duration::from_millis(gap_ms));
            let now = clock_ns(&clock);
            let (connection, user) = (format!("c{connection}"), format!("u{user}"));
            let subjects = [(0, &connection, 1), (1, &connection, size), (2, &user, 1)];
            let requests: Vec<Request<'_>> = subjects
                .iter()
                .map(|&(i, id, cost)| Request::from((ids[i], id)).cost(cost))
                .collect();
            // What the exact rule says of each policy on the model's TATs.
            let steps: Vec<_> = subjects
                .iter()
                .map(|&(i, id, cost)| {
                    let tat = model.get(&(i, id.clone())).copied().unwrap_or(0);
                    quotas[i].step(now, cost).unwrap().apply(tat)
                })
                .collect();
            let allowed = steps.iter().all(|(outcome, _)| *outcome == Outcome::Allowed);
            let verdicts = runtime.block_on(service.decide_all(&requests)).unwrap();
            prop_assert_eq!(verdicts.iter().all(|v| v.allowed()), allowed, "{:?}", verdicts);
            if allowed {
                prop_assert_eq!(verdicts.len(), 3);
                for (&(i, id, _), (_, tat)) in subjects.iter().zip(&steps) {
                    model.insert((i, id.clone()), *tat);
                }
            } else {
                // The refused verdicts are the policies that refuse on
                // their own; nothing changed anywhere (the model keeps its
                // TATs, and the next action checks the service agrees).
                let refusing: Vec<PolicyId> = subjects
                    .iter()
                    .zip(&steps)
                    .filter(|(_, (outcome, _))| *outcome == Outcome::Denied)
                    .map(|(&(i, _, _), _)| ids[i])
                    .collect();
                let reported: Vec<PolicyId> = verdicts.iter().map(|v| v.policy).collect();
                prop_assert!(
                    reported.iter().all(|p| refusing.contains(p)) && !reported.is_empty(),
                    "reported {:?}, refusing {:?}", reported, refusing
                );
            }
        }
    }
}

/// The fake clock's now, in nanoseconds since the Unix epoch.
fn clock_ns(clock: &FakeClock) -> Nanos {
    use ratelimiter::Clock;
    clock.now()
}
