//! `RealNft` against the real `nft`, inside a network namespace each test creates and deletes.
//!
//! These need root: run with `cargo test -p banger-host -- --include-ignored` as root.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod netns_support;

use std::net::Ipv4Addr;

use banger_host::nft::{
    NatRuleset, Nft, NftError, PortForward, Protocol, RealNft, DEFAULT_NFT_BINARY,
};
use netns_support::TestNetns;
use serde_json::Value;

fn nft_in(netns: &TestNetns) -> RealNft {
    RealNft::new(Some(netns.name().to_string()), DEFAULT_NFT_BINARY)
}

fn ruleset(port_forwards: Vec<PortForward>) -> NatRuleset {
    NatRuleset {
        port_forwards,
        ..NatRuleset::new((Ipv4Addr::new(10, 77, 0, 0), 24), "br-banger")
    }
}

fn forward(host_port: u16, guest_port: u16) -> PortForward {
    PortForward {
        proto: Protocol::Tcp,
        host_port,
        guest_ip: Ipv4Addr::new(10, 77, 0, 2),
        guest_port,
    }
}

/// A listing with the kernel-assigned `handle` numbers removed (a re-created table gets new ones).
fn without_handles(mut value: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("handle");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut value);
    value
}

/// The `expr` arrays of the rules of `chain` in a `nft -j list table` listing.
fn rules_of(listing: &Value, chain: &str) -> Vec<Value> {
    listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item.get("rule"))
        .filter(|rule| rule["chain"] == chain)
        .map(|rule| rule["expr"].clone())
        .collect()
}

fn add_foreign_table(netns: &TestNetns) {
    netns.exec("nft", &["add", "table", "inet", "other"]);
    netns.exec(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "other",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    );
    netns.exec(
        "nft",
        &[
            "add", "rule", "inet", "other", "input", "tcp", "dport", "22", "accept",
        ],
    );
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn apply_twice_gives_the_same_table() {
    let netns = TestNetns::create();
    let nft = nft_in(&netns);
    let rules = ruleset(vec![forward(8080, 80)]);

    nft.apply(&rules).await.unwrap();
    let first = without_handles(nft.list_table("banger").await.unwrap().unwrap());
    nft.apply(&rules).await.unwrap();
    let second = without_handles(nft.list_table("banger").await.unwrap().unwrap());
    assert_eq!(first, second);
    assert_eq!(rules_of(&second, "postrouting").len(), 1);
    assert_eq!(rules_of(&second, "forward").len(), 3);
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn a_foreign_table_survives_apply_and_delete() {
    let netns = TestNetns::create();
    add_foreign_table(&netns);
    let nft = nft_in(&netns);
    let other_before = nft.list_table("other").await.unwrap().unwrap();

    nft.apply(&ruleset(vec![forward(8080, 80)])).await.unwrap();
    assert_eq!(
        nft.list_table("other").await.unwrap().unwrap(),
        other_before
    );
    let mut tables = nft.list_tables().await.unwrap();
    tables.sort();
    assert_eq!(
        tables,
        vec![
            ("inet".to_string(), "banger".to_string()),
            ("inet".to_string(), "other".to_string())
        ]
    );

    nft.delete_table("banger").await.unwrap();
    assert_eq!(
        nft.list_table("other").await.unwrap().unwrap(),
        other_before
    );
    assert_eq!(
        nft.list_tables().await.unwrap(),
        vec![("inet".to_string(), "other".to_string())]
    );
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn delete_table_removes_only_bangers_and_a_missing_table_is_fine() {
    let netns = TestNetns::create();
    add_foreign_table(&netns);
    let nft = nft_in(&netns);

    nft.delete_table("banger").await.unwrap();
    nft.apply(&ruleset(Vec::new())).await.unwrap();
    nft.delete_table("banger").await.unwrap();
    nft.delete_table("banger").await.unwrap();
    assert_eq!(nft.list_table("banger").await.unwrap(), None);
    assert_eq!(
        nft.list_tables().await.unwrap(),
        vec![("inet".to_string(), "other".to_string())]
    );
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn port_forwards_appear_as_dnat_and_are_replaced_on_reapply() {
    let netns = TestNetns::create();
    let nft = nft_in(&netns);

    nft.apply(&ruleset(vec![forward(8080, 80)])).await.unwrap();
    let listing = nft.list_table("banger").await.unwrap().unwrap();
    for chain in ["prerouting", "output"] {
        let rules = rules_of(&listing, chain);
        assert_eq!(rules.len(), 1, "{chain}: {rules:?}");
        let dnat = rules[0]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.get("dnat"))
            .unwrap();
        assert_eq!(dnat["addr"], "10.77.0.2", "{dnat}");
        assert_eq!(dnat["port"], 80, "{dnat}");
        let text = rules[0].to_string();
        assert!(text.contains("8080"), "{text}");
    }
    let human = netns.exec("nft", &["list", "table", "inet", "banger"]);
    assert!(
        human.contains("tcp dport 8080 dnat ip to 10.77.0.2:80"),
        "{human}"
    );

    nft.apply(&ruleset(vec![forward(2222, 22)])).await.unwrap();
    let human = netns.exec("nft", &["list", "table", "inet", "banger"]);
    assert!(!human.contains("8080"), "the old forward is gone: {human}");
    assert!(
        human.contains("tcp dport 2222 dnat ip to 10.77.0.2:22"),
        "{human}"
    );
}

#[tokio::test]
#[ignore = "needs root and netns; run with --include-ignored"]
async fn a_failed_apply_names_the_table_and_namespace_and_keeps_the_old_table() {
    let netns = TestNetns::create();
    let nft = nft_in(&netns);
    nft.apply(&ruleset(vec![forward(8080, 80)])).await.unwrap();
    let before = nft.list_table("banger").await.unwrap().unwrap();

    // `false` stands in for an nft that refuses the transaction.
    let refusing = RealNft::new(Some(netns.name().to_string()), "false");
    let err = refusing.apply(&ruleset(Vec::new())).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, NftError::Command { .. }), "{err:?}");
    assert!(message.contains("apply table inet banger"), "{message}");
    assert!(message.contains(netns.name()), "{message}");
    assert_eq!(nft.list_table("banger").await.unwrap().unwrap(), before);
}
