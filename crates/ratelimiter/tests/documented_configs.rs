//! Every configuration file the documentation shows parses: each ```toml
//! block of the README and docs/ with a `[policy.`, `[route.` or `[connect]`
//! table is a file a reader may copy.

use ratelimiter::Config;

fn blocks(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_start() != "```toml" {
            continue;
        }
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.trim_start().starts_with("```"))
            .collect();
        found.push(body.join("\n"));
    }
    found
}

#[test]
fn every_documented_configuration_parses() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut checked = 0;
    for doc in ["README.md", "docs/operations.md", "docs/deploy.md"] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
        for block in blocks(&text) {
            let is_config = ["[policy.", "[route.", "[connect]"]
                .iter()
                .any(|table| block.contains(table));
            if !is_config {
                continue;
            }
            // A block may use policies another block of the same page
            // defines; each README block here stands alone.
            if let Err(error) = Config::from_file_text(doc, &block, |_| None) {
                panic!("a configuration in {doc} does not parse: {error}\n{block}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "configurations checked: {checked}");
}

#[test]
fn a_broken_block_would_be_caught() {
    let page = "```toml\n[policy.a]\nkey = \"ip\"\nlimits = [\"5/fortnight\"]\n```\n";
    let block = &blocks(page)[0];
    assert!(Config::from_file_text("page", block, |_| None).is_err());
}
