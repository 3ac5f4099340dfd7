//! `Limits::from_env` reads the real process environment. This file is its own
//! test binary with a single test, so changing the environment races with nothing.

use ratelimiter::config::Limits;
use ratelimiter::key::Operation;

#[test]
fn limits_come_from_the_process_environment() {
    #[allow(unsafe_code)]
    // SAFETY: this is the only test in this process, and no other thread reads
    // or writes the environment.
    unsafe {
        std::env::set_var("RATE_LIMIT_SESSIONS_PER_HOUR", "3");
        std::env::set_var("RATE_LIMIT_HEARTBEATS_PER_MIN", " 9 ");
        std::env::remove_var("RATE_LIMIT_LISTENER_JOINS_PER_MIN");
        std::env::remove_var("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN");
    }
    let limits = Limits::from_env().unwrap();
    assert_eq!(limits.quota(Operation::SessionCreate).limit(), 3);
    assert_eq!(limits.quota(Operation::Heartbeat).limit(), 9);
    assert_eq!(limits.quota(Operation::ListenerJoin).limit(), 10);
    assert_eq!(limits.quota(Operation::ConnectionAttempt).limit(), 20);

    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe {
        std::env::set_var("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN", "-1");
    }
    let err = Limits::from_env().unwrap_err().to_string();
    assert_eq!(
        err,
        "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN must be a positive integer (1 to 4294967295), got \"-1\""
    );
}
