//! `Config::from_env` reads the real process environment. This file is its own
//! test binary with a single test, so changing the environment races with nothing.

use ratelimiter::config::Config;
use ratelimiter::policy::PolicyId;

fn count(config: &Config, id: PolicyId) -> u32 {
    config.policies[id].limits()[0].quota().limit()
}

#[test]
fn limits_come_from_the_process_environment_and_the_file_it_names() {
    #[allow(unsafe_code)]
    // SAFETY: this is the only test in this process, and no other thread reads
    // or writes the environment.
    unsafe {
        std::env::set_var("RATE_LIMIT_SESSIONS_PER_HOUR", "3");
        std::env::set_var("RATE_LIMIT_HEARTBEATS_PER_MIN", " 9 ");
        std::env::remove_var("RATE_LIMIT_LISTENER_JOINS_PER_MIN");
        std::env::remove_var("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN");
        std::env::remove_var("RATE_LIMIT_CONFIG");
    }
    let config = Config::from_env().unwrap();
    assert_eq!(count(&config, PolicyId::SESSION_CREATE), 3);
    assert_eq!(count(&config, PolicyId::HEARTBEAT), 9);
    assert_eq!(count(&config, PolicyId::LISTENER_JOIN), 10);
    assert_eq!(count(&config, PolicyId::CONNECTION_ATTEMPT), 20);

    let dir = std::env::temp_dir().join(format!("ratelimiter-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    std::fs::write(
        &file,
        "[policy.send_message]\nkey = \"connection\"\nlimits = [\"3/10s\"]\n",
    )
    .unwrap();
    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe {
        std::env::set_var("RATE_LIMIT_CONFIG", &file);
    }
    let config = Config::from_env().unwrap();
    assert!(config.policies.id("send_message").is_some());
    assert_eq!(count(&config, PolicyId::SESSION_CREATE), 3);
    std::fs::remove_dir_all(&dir).unwrap();

    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe {
        std::env::set_var("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN", "-1");
        std::env::remove_var("RATE_LIMIT_CONFIG");
    }
    let err = Config::from_env().unwrap_err().to_string();
    assert_eq!(
        err,
        "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN must be a positive integer (1 to 4294967295), got \"-1\""
    );
}
