//! A cap against an exact model: under any sequence of connects (with the
//! seed's attempt and join on the same address, as a listener's `$connect`
//! checks them in one call, or the attempt and a user's session, on two
//! items, as a speaker's), disconnects, repeated connects and time passing, a
//! connection is admitted exactly when the model says so: its rates allow
//! and fewer than N of the address's connections are live (released
//! neither by a disconnect nor by the end of their lease), or it holds a
//! seat already. A full cap still counts the attempt.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use ratelimiter::gcra::{Nanos, Outcome};
use ratelimiter::lease::{Holder, LEASE_LIFETIME};
use ratelimiter::{Builder, Clock, Config, FakeClock, MemoryStore, PolicyId, Request};

const START_SECS: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
enum Event {
    /// A new connection from address `ip` (0..2), or the same connection
    /// (`again`) asking again; a speaker's (user 0..2) or a listener's.
    Connect {
        ip: u8,
        again: bool,
        user: Option<u8>,
    },
    /// The `n`-th admitted connection goes (`$disconnect`).
    Disconnect { n: usize },
    /// Time passes, in seconds (up to a lease's whole life).
    Wait { secs: u64 },
}

fn events() -> impl Strategy<Value = (u32, Vec<Event>)> {
    let event = prop_oneof![
        4 => (0u8..2, any::<bool>(), prop::option::of(0u8..2))
            .prop_map(|(ip, again, user)| Event::Connect { ip, again, user }),
        2 => (0usize..8).prop_map(|n| Event::Disconnect { n }),
        1 => prop_oneof![0u64..=90, Just(LEASE_LIFETIME.as_secs())].prop_map(|secs| Event::Wait { secs }),
    ];
    (1u32..=3, prop::collection::vec(event, 1..60))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_cap_admits_exactly_what_the_model_does((n, events) in events(), cache in any::<bool>()) {
        // Small rates, so that a token counted twice, or not given back,
        // changes what is admitted.
        let text = format!(
            "[policy.open]\nkey = \"ip\"\nconcurrent = {n}\n[connect]\npolicies = [\"open\"]\n\
             [policy.connection_attempt]\nlimits = [\"4/min\"]\n\
             [policy.listener_join]\nlimits = [\"3/min\"]\n\
             [policy.session_create]\nlimits = [\"2/min\"]\n"
        );
        let config = Config::from_file_text("caps.toml", &text, |_| None).unwrap();
        let clock = FakeClock::at_secs(START_SECS);
        let service = Builder::from_config(config.clone())
            .clock(clock.clone())
            .deny_cache(if cache { 10_000 } else { 0 })
            .build(MemoryStore::new());
        let cap = service.policy_id("open").unwrap();
        let rates = [PolicyId::CONNECTION_ATTEMPT, PolicyId::LISTENER_JOIN, PolicyId::SESSION_CREATE]
            .map(|id| *config.policies[id].limits()[0].quota());
        // The model: the rates' TATs per address (attempt, join) or user
        // (session), and each address's seats (connection, since ms).
        let mut tats: HashMap<(usize, u8), Nanos> = HashMap::new();
        let mut seats: HashMap<u8, Vec<(String, u64)>> = HashMap::new();
        let mut admitted: Vec<(u8, String, u64)> = Vec::new();
        let mut last: Option<(u8, String, u64)> = None;
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (i, event) in events.into_iter().enumerate() {
            let now = clock.now();
            let now_ms = now / 1_000_000;
            match event {
                Event::Wait { secs } => clock.advance(Duration::from_secs(secs)),
                Event::Disconnect { n } => {
                    let Some((ip, id, since)) = admitted.get(n).cloned() else { continue };
                    let addr = format!("192.0.2.{ip}");
                    runtime
                        .block_on(service.release(Request::from((cap, addr.as_str())).holder(Holder::new(&id, since))))
                        .unwrap();
                    seats.entry(ip).or_default().retain(|(held, _)| *held != id);
                }
                Event::Connect { ip, again, user } => {
                    let (ip, id, since) = match (&last, again) {
                        (Some(previous), true) if now_ms < previous.2 + LEASE_LIFETIME.as_millis() as u64 => previous.clone(),
                        _ => (ip, format!("c{i}"), now_ms),
                    };
                    last = Some((ip, id.clone(), since));
                    let addr = format!("192.0.2.{ip}");
                    let holder = Holder::new(&id, since);
                    let first = [
                        Request::from((PolicyId::CONNECTION_ATTEMPT, addr.as_str())).holder(holder),
                        Request::from((cap, addr.as_str())).holder(holder),
                    ];
                    let name = user.map(|u| format!("user-{u}"));
                    let second = [match &name {
                        Some(name) => Request::from((PolicyId::SESSION_CREATE, name.as_str())),
                        None => Request::from((PolicyId::LISTENER_JOIN, addr.as_str())),
                    }
                    .holder(holder)];
                    let (v1, v2) = runtime.block_on(service.decide_in_turn(&first, &second)).unwrap();
                    let allowed = v1.iter().chain(v2.iter().flatten()).all(|v| v.allowed());
                    // The model: the attempt, then the join, then the seat.
                    let step = |k: usize, who: u8, tats: &HashMap<(usize, u8), Nanos>| {
                        rates[k].step(now, 1).unwrap().apply(*tats.get(&(k, who)).unwrap_or(&0))
                    };
                    // The second check: the address's join, or the user's session.
                    let (k, who) = match user {
                        Some(u) => (2, u),
                        None => (1, ip),
                    };
                    let (attempt, attempt_tat) = step(0, ip, &tats);
                    let mut expected = false;
                    if attempt == Outcome::Allowed {
                        let (join, join_tat) = step(k, who, &tats);
                        if join == Outcome::Allowed {
                            let held = seats.entry(ip).or_default();
                            held.retain(|(_, s)| (s + LEASE_LIFETIME.as_millis() as u64) * 1_000_000 > now);
                            let mine = held.iter().any(|(h, _)| *h == id);
                            // Rates count before the seat: both stay
                            // counted when the cap is full.
                            tats.insert((0, ip), attempt_tat);
                            tats.insert((k, who), join_tat);
                            if mine || (held.len() as u32) < n {
                                if !mine {
                                    held.push((id.clone(), since));
                                    admitted.push((ip, id.clone(), since));
                                }
                                expected = true;
                            }
                        } else {
                            // A refused join still counts the attempt.
                            tats.insert((0, ip), attempt_tat);
                        }
                    }
                    prop_assert_eq!(allowed, expected, "event {}: {:?} {:?}", i, v1, v2);
                }
            }
        }
    }
}
