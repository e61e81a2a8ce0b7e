//! `RealHostForward` against the real `iptables`, inside a network namespace each test creates
//! and deletes, set up the way Docker and ufw leave a host: `-P FORWARD DROP`.
//!
//! These need root and `iptables`: run with `cargo test -p banger-host -- --include-ignored` as
//! root (scripts/setup installs iptables).
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod netns_support;

use std::process::Command;

use banger_host::hostfw::{HostForward, RealHostForward, DEFAULT_IPTABLES_BINARY};
use netns_support::TestNetns;

fn iptables(netns: &TestNetns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns.name(), "iptables", "-w"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "iptables {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn forward_in(netns: &TestNetns) -> RealHostForward {
    RealHostForward::new(Some(netns.name().to_string()), DEFAULT_IPTABLES_BINARY)
}

/// `iptables -S` of the whole filter table, without banger's rules.
fn foreign_rules(netns: &TestNetns) -> Vec<String> {
    iptables(netns, &["-S"])
        .lines()
        .filter(|l| !l.contains("banger:"))
        .map(str::to_string)
        .collect()
}

fn banger_lines(netns: &TestNetns, chain: &str) -> Vec<String> {
    iptables(netns, &["-S", chain])
        .lines()
        .filter(|l| l.contains("banger:br-test"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
#[ignore = "needs root, netns and iptables; run with --include-ignored"]
async fn docker_s_drop_policy_gets_accepts_in_docker_user_and_only_they_are_removed() {
    let ns = TestNetns::create();
    iptables(&ns, &["-P", "FORWARD", "DROP"]);
    iptables(&ns, &["-N", "DOCKER-USER"]);
    iptables(&ns, &["-A", "FORWARD", "-j", "DOCKER-USER"]);
    iptables(&ns, &["-A", "DOCKER-USER", "-j", "RETURN"]);
    iptables(&ns, &["-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"]);
    let before = foreign_rules(&ns);

    let fw = forward_in(&ns);
    assert_eq!(
        fw.open("br-test").await.unwrap().as_deref(),
        Some("DOCKER-USER")
    );
    let lines = banger_lines(&ns, "DOCKER-USER");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let chain = iptables(&ns, &["-S", "DOCKER-USER"]);
    let first_rule = chain.lines().find(|l| l.starts_with("-A")).unwrap();
    assert!(
        first_rule.contains("banger:br-test"),
        "banger's accepts go before Docker's RETURN: {chain}"
    );
    assert!(banger_lines(&ns, "FORWARD").is_empty());

    // Idempotent: a second open (the sweep re-applies) adds nothing.
    fw.open("br-test").await.unwrap();
    assert_eq!(banger_lines(&ns, "DOCKER-USER").len(), 2);

    // Docker flushing DOCKER-USER on restart: the next open puts the rules back.
    iptables(&ns, &["-F", "DOCKER-USER"]);
    iptables(&ns, &["-A", "DOCKER-USER", "-j", "RETURN"]);
    fw.open("br-test").await.unwrap();
    assert_eq!(banger_lines(&ns, "DOCKER-USER").len(), 2);

    // A partial set (someone deleted one) is replaced as a whole, never duplicated.
    let one = banger_lines(&ns, "DOCKER-USER")[0].replacen("-A ", "-D ", 1);
    let words: Vec<String> = one
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_string())
        .collect();
    iptables(&ns, &words.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(banger_lines(&ns, "DOCKER-USER").len(), 1);
    fw.open("br-test").await.unwrap();
    assert_eq!(banger_lines(&ns, "DOCKER-USER"), lines);

    assert_eq!(fw.close("br-test").await.unwrap(), 2);
    assert_eq!(fw.close("br-test").await.unwrap(), 0);
    assert_eq!(
        foreign_rules(&ns),
        before,
        "nothing but banger's rules changed"
    );
}

#[tokio::test]
#[ignore = "needs root, netns and iptables; run with --include-ignored"]
async fn without_docker_user_the_accepts_go_to_the_top_of_forward() {
    let ns = TestNetns::create();
    iptables(&ns, &["-P", "FORWARD", "DROP"]);
    iptables(&ns, &["-A", "FORWARD", "-j", "DROP"]);
    let fw = forward_in(&ns);
    assert_eq!(
        fw.open("br-test").await.unwrap().as_deref(),
        Some("FORWARD")
    );
    let listing = iptables(&ns, &["-S", "FORWARD"]);
    let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A")).collect();
    assert_eq!(rules.len(), 3, "{listing}");
    assert!(rules[0].contains("-i br-test") && rules[0].contains("banger:br-test"));
    assert!(rules[1].contains("-o br-test") && rules[1].contains("RELATED,ESTABLISHED"));
    assert_eq!(rules[2], "-A FORWARD -j DROP");
    assert_eq!(fw.close("br-test").await.unwrap(), 2);
    assert_eq!(
        iptables(&ns, &["-S", "FORWARD"]),
        "-P FORWARD DROP\n-A FORWARD -j DROP\n"
    );
}

#[tokio::test]
#[ignore = "needs root, netns and iptables; run with --include-ignored"]
async fn a_final_catch_all_reject_counts_as_dropping() {
    let ns = TestNetns::create();
    iptables(&ns, &["-A", "FORWARD", "-i", "lo", "-j", "ACCEPT"]);
    iptables(
        &ns,
        &[
            "-A",
            "FORWARD",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-prohibited",
        ],
    );
    let fw = forward_in(&ns);
    assert_eq!(
        fw.open("br-test").await.unwrap().as_deref(),
        Some("FORWARD")
    );
    let listing = iptables(&ns, &["-S", "FORWARD"]);
    let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A")).collect();
    assert!(rules[0].contains("banger:br-test") && rules[1].contains("banger:br-test"));
    assert!(rules[3].contains("REJECT"), "{listing}");
    assert_eq!(fw.close("br-test").await.unwrap(), 2);
}

#[tokio::test]
#[ignore = "needs root, netns and iptables; run with --include-ignored"]
async fn a_docker_user_chain_forward_no_longer_jumps_to_is_not_used() {
    let ns = TestNetns::create();
    iptables(&ns, &["-P", "FORWARD", "DROP"]);
    iptables(&ns, &["-N", "DOCKER-USER"]);
    let fw = forward_in(&ns);
    assert_eq!(
        fw.open("br-test").await.unwrap().as_deref(),
        Some("FORWARD")
    );
    assert!(banger_lines(&ns, "DOCKER-USER").is_empty());
    assert_eq!(banger_lines(&ns, "FORWARD").len(), 2);
    assert_eq!(fw.close("br-test").await.unwrap(), 2);
}

#[tokio::test]
#[ignore = "needs root, netns and iptables; run with --include-ignored"]
async fn an_accepting_forward_chain_is_left_alone() {
    let ns = TestNetns::create();
    let fw = forward_in(&ns);
    assert_eq!(fw.open("br-test").await.unwrap(), None);
    assert_eq!(iptables(&ns, &["-S", "FORWARD"]), "-P FORWARD ACCEPT\n");
    assert_eq!(fw.close("br-test").await.unwrap(), 0);
}
