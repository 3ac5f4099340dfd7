//! The SAM template and the code must agree: table key and TTL attribute,
//! environment variables, binary names, and the DynamoDB actions the store
//! calls. Each check fails when one side changes alone.

use std::collections::BTreeSet;

use ratelimiter::config::{CONFIG_VAR, KEY_SECRET_VAR, TIER_FIELD_VAR};
use ratelimiter::config::{FAILURE_MODE_VAR, SHADOW_MODE_VAR, per_policy_var};
use ratelimiter::policy::BUILTINS;
use ratelimiter_dynamodb::{
    CONNECT_TIMEOUT_VAR, PARTITION_KEY, TABLE_VAR, TIMEOUT_VAR, TTL_ATTRIBUTE,
};
use ratelimiter_lambda::emf::{METRICS_VAR, NAMESPACE_VAR};

fn template() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    std::fs::read_to_string(path).expect("template.yaml is at the workspace root")
}

/// Every `RATE_LIMIT_*` variable the code reads.
fn variables_read_by_the_code() -> BTreeSet<String> {
    let mut vars: BTreeSet<String> = BUILTINS.iter().map(|b| b.env_var.to_owned()).collect();
    vars.extend(
        [
            TABLE_VAR,
            TIMEOUT_VAR,
            CONNECT_TIMEOUT_VAR,
            FAILURE_MODE_VAR,
            SHADOW_MODE_VAR,
            CONFIG_VAR,
            KEY_SECRET_VAR,
            TIER_FIELD_VAR,
        ]
        .map(str::to_owned),
    );
    for builtin in &BUILTINS {
        vars.insert(per_policy_var(FAILURE_MODE_VAR, builtin.name));
        vars.insert(per_policy_var(SHADOW_MODE_VAR, builtin.name));
    }
    vars.insert(ratelimiter_lambda::management::MANAGEMENT_ENDPOINT_VAR.to_owned());
    vars.insert(ratelimiter_lambda::forward::FORWARD_FUNCTION_VAR.to_owned());
    vars.insert(ratelimiter_lambda::soft::CONNECT_REJECT_VAR.to_owned());
    for var in [
        ratelimiter_lambda::authorizer::JWKS_URL_VAR,
        ratelimiter_lambda::authorizer::ISSUER_VAR,
        ratelimiter_lambda::authorizer::AUDIENCE_VAR,
    ] {
        vars.insert(var.to_owned());
    }
    vars.insert(METRICS_VAR.to_owned());
    vars.insert(NAMESPACE_VAR.to_owned());
    vars.insert("RATE_LIMIT_LOG_LEVEL".to_owned());
    vars
}

#[test]
fn the_table_has_the_key_and_ttl_the_store_writes() {
    let template = template();
    assert!(
        template.contains(&format!(
            "- AttributeName: {PARTITION_KEY}\n          AttributeType: S"
        )),
        "the table's attribute definitions must declare the string key {PARTITION_KEY}"
    );
    assert!(template.contains(&format!(
        "- AttributeName: {PARTITION_KEY}\n          KeyType: HASH"
    )));
    assert!(
        template.contains(&format!("TimeToLiveSpecification:\n        AttributeName: {TTL_ATTRIBUTE}\n        Enabled: true")),
        "TTL must be enabled on {TTL_ATTRIBUTE}"
    );
    assert!(template.contains("BillingMode: PAY_PER_REQUEST"));
}

#[test]
fn every_limit_and_policy_variable_is_set_and_every_set_variable_is_read() {
    let template = template();
    for builtin in &BUILTINS {
        assert!(
            template.contains(&format!("{}: !Ref", builtin.env_var)),
            "{} is not set",
            builtin.env_var
        );
    }
    for var in [
        TABLE_VAR,
        TIMEOUT_VAR,
        CONNECT_TIMEOUT_VAR,
        FAILURE_MODE_VAR,
        SHADOW_MODE_VAR,
        METRICS_VAR,
    ] {
        assert!(
            template.contains(&format!("{var}: !Ref")),
            "{var} is not set"
        );
    }
    assert!(
        template.contains(&format!("{NAMESPACE_VAR}: !Sub")),
        "{NAMESPACE_VAR} is not set"
    );
    // The key secret comes from the stack's own generated secret.
    assert!(
        template.contains(&format!(
            "{KEY_SECRET_VAR}: !Sub \"{{{{resolve:secretsmanager:${{KeySecret}}:SecretString}}}}\""
        )),
        "{KEY_SECRET_VAR} is not set from the generated secret"
    );
    assert!(template.contains("Type: AWS::SecretsManager::Secret"));
    // Given to the four functions that build keys (connect, disconnect,
    // heartbeat, message), and to no other.
    let secret_line = format!("{KEY_SECRET_VAR}: !Sub");
    assert_eq!(template.matches(&secret_line).count(), 4);
    let globals = template
        .split("\nGlobals:\n")
        .nth(1)
        .unwrap()
        .split("\nResources:\n")
        .next()
        .unwrap();
    assert!(
        !globals.contains(KEY_SECRET_VAR),
        "the secret is in Globals: every function gets it"
    );
    assert!(template.contains("PasswordLength: 64"));
    let known = variables_read_by_the_code();
    let set_in_template: Vec<&str> = template
        .lines()
        .filter_map(|line| line.trim().split_once(':').map(|(name, _)| name))
        .filter(|name| name.starts_with("RATE_LIMIT_"))
        .collect();
    assert!(set_in_template.len() >= 8, "{set_in_template:?}");
    for name in set_in_template {
        assert!(
            known.contains(name),
            "the template sets {name}, which no code reads"
        );
    }
}

#[test]
fn the_functions_are_the_binaries_this_crate_builds() {
    let template = template();
    for (name, path) in [
        ("connect", env!("CARGO_BIN_EXE_connect")),
        ("disconnect", env!("CARGO_BIN_EXE_disconnect")),
        ("heartbeat", env!("CARGO_BIN_EXE_heartbeat")),
        ("message", env!("CARGO_BIN_EXE_message")),
        ("authorizer", env!("CARGO_BIN_EXE_authorizer")),
    ] {
        assert!(path.ends_with(name), "{path}");
        assert!(
            template.contains(&format!("Binary: {name}\n")),
            "no function builds {name}"
        );
    }
    assert_eq!(template.matches("BuildMethod: rust-cargolambda").count(), 5);
    // $disconnect gives back what $connect took.
    assert!(template.contains("RouteKey: $disconnect\n"));
    assert!(template.contains("${DisconnectFunction.Arn}/invocations"));
    // Every message no other route takes reaches the message function.
    assert!(template.contains("RouteKey: $default\n"));
    assert!(template.contains("${MessageFunction.Arn}/invocations"));
}

#[test]
fn the_functions_may_call_exactly_what_the_store_calls() {
    let template = template();
    // UpdateItem (decisions, refunds), GetItem (reads after a condition
    // failure without the old item); nothing else on the table. Status,
    // reset and the migration are the operator's, with the CLI.
    let actions: BTreeSet<&str> = template
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- dynamodb:"))
        .collect();
    assert_eq!(actions, BTreeSet::from(["GetItem", "UpdateItem"]));
    assert!(!template.contains("dynamodb:*"));
    assert!(template.contains("Action: execute-api:ManageConnections"));
    assert!(template.contains("RouteSelectionExpression: \"$request.body.action\""));
    // The message function may invoke the one function it forwards to, and
    // only when there is one.
    assert_eq!(
        template
            .matches("Action: lambda:InvokeFunction\n                Resource:")
            .count(),
        1
    );
    assert!(template.contains(
        "- HasForward\n              - Effect: Allow\n                Action: lambda:InvokeFunction\n                Resource: !Ref ForwardFunctionArn\n"
    ));
}

/// The template's parameter names (the keys under `Parameters:`).
fn template_parameters(template: &str) -> BTreeSet<String> {
    template
        .split("\nParameters:\n")
        .nth(1)
        .expect("the template has parameters")
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with(' '))
        .filter_map(|line| line.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|name| !name.starts_with(' '))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_stage_profile_sets_only_template_parameters_and_its_own_stage() {
    let template = template();
    let parameters = template_parameters(&template);
    assert!(
        parameters.contains("HeartbeatsPerMin") && parameters.contains("Stage"),
        "{parameters:?}"
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../samconfig.toml");
    let samconfig = std::fs::read_to_string(path).expect("samconfig.toml is at the workspace root");
    let mut stages = BTreeSet::new();
    let mut section = "";
    for line in samconfig.lines() {
        if line.starts_with('[') {
            section = line;
        }
        let Some(overrides) = line
            .strip_prefix("parameter_overrides = \"")
            .and_then(|rest| rest.strip_suffix('"'))
        else {
            continue;
        };
        let environment = section.trim_start_matches('[').split('.').next().unwrap();
        for pair in overrides.split_whitespace() {
            let (name, value) = pair.split_once('=').expect("Name=Value");
            assert!(
                parameters.contains(name),
                "{section} sets {name}, which the template does not declare"
            );
            if name == "Stage" && environment != "default" {
                assert_eq!(value, environment, "{section} deploys another stage");
                stages.insert(value.to_owned());
            }
        }
    }
    assert_eq!(
        stages,
        BTreeSet::from(["dev", "prod", "staging"].map(str::to_owned))
    );
}

#[test]
fn a_flood_is_bounded_before_the_functions_run() {
    let template = template();
    let parameters = template_parameters(&template);
    for name in [
        "StageRateLimit",
        "StageBurstLimit",
        "ConnectConcurrency",
        "HeartbeatConcurrency",
        "MessageConcurrency",
    ] {
        assert!(parameters.contains(name), "{name} is not a parameter");
    }
    assert!(template.contains("ThrottlingRateLimit: !Ref StageRateLimit"));
    assert!(template.contains("ThrottlingBurstLimit: !Ref StageBurstLimit"));
    assert!(template.contains("ReservedConcurrentExecutions: !Ref ConnectConcurrency"));
    assert!(template.contains("ReservedConcurrentExecutions: !Ref HeartbeatConcurrency"));
    assert!(template.contains("ReservedConcurrentExecutions: !Ref MessageConcurrency"));
}

#[test]
fn connect_has_an_authorizer_of_yours_or_the_default_one() {
    let template = template();
    let parameters = template_parameters(&template);
    for name in ["AuthorizerArn", "JwksUrl", "JwtIssuer", "JwtAudience"] {
        assert!(parameters.contains(name), "{name} is not a parameter");
    }
    // Yours when its ARN is given; else the default when a JWKS URL is.
    assert!(template.contains("HasOwnAuthorizer: !Not [!Equals [!Ref AuthorizerArn, \"\"]]"));
    assert!(template.contains("Condition: UseDefaultAuthorizer"));
    assert!(template.contains("Binary: authorizer"));
    assert!(template.contains("AuthorizerType: REQUEST"));
    assert!(template.contains("AuthorizationType: !If [HasAuthorizer, CUSTOM, NONE]"));
    // No identity source: clients with no token reach the authorizer.
    assert!(!template.contains("IdentitySource"));
    // The default authorizer touches no table.
    let authorizer = template
        .split("  AuthorizerFunction:\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    assert!(!authorizer.contains("dynamodb:"), "{authorizer}");
}

#[test]
fn soft_rejection_is_a_parameter_and_its_follow_up_is_allowed_only_when_on() {
    use ratelimiter_lambda::soft::CONNECT_REJECT_VAR;
    let template = template();
    assert!(template.contains(
        "  ConnectReject:\n    Type: String\n    Default: hard\n    AllowedValues: [hard, soft]\n"
    ));
    let globals = template.split("\nGlobals:\n").nth(1).unwrap();
    let globals = globals.split("\nResources:\n").next().unwrap();
    assert!(globals.contains(&format!("{CONNECT_REJECT_VAR}: !Ref ConnectReject")));
    assert!(template.contains("SoftReject: !Equals [!Ref ConnectReject, soft]"));
    // $connect may invoke itself (the follow-up), post and delete, only
    // with soft rejection on; its asynchronous invocations are never
    // retried nor kept past a minute.
    let follow_up = template
        .split("\n  ConnectFollowUpPolicy:\n")
        .nth(1)
        .expect("the follow-up's policy")
        .split("\n\n")
        .next()
        .unwrap();
    assert!(follow_up.contains("Condition: SoftReject"), "{follow_up}");
    assert!(follow_up.contains("Roles: [!Ref ConnectFunctionRole]"));
    assert!(follow_up.contains(
        "Action: lambda:InvokeFunction\n            Resource: !GetAtt ConnectFunction.Arn"
    ));
    for method in ["POST", "DELETE"] {
        assert!(follow_up.contains(&format!("${{Stage}}/{method}/@connections/*")));
    }
    assert!(template.contains(
        "EventInvokeConfig:\n        MaximumEventAgeInSeconds: 60\n        MaximumRetryAttempts: 0\n"
    ));
    // The heartbeat and message functions close a marked connection that
    // outlived its follow-up: DELETE, only with soft rejection on.
    assert_eq!(
        template
            .matches("- SoftReject\n              - Effect: Allow\n                Action: execute-api:ManageConnections\n")
            .count(),
        2
    );
}
