//! Network faults with nftables: every node and client has its own loopback
//! address, and a fault drops packets between chosen addresses (both ways
//! for a partition, one way for a one-way link). One nftables table per run,
//! removed at the end.

use std::process::Command;

use anyhow::{bail, Context};

pub struct Firewall {
    table: String,
}

fn nft(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .context("run nft (the chaos suite needs nftables and root)")?;
    if !out.status.success() {
        bail!("nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Firewall {
    pub fn new(name: &str) -> anyhow::Result<Firewall> {
        let table = format!("inflight_chaos_{name}");
        let _ = nft(&["delete", "table", "inet", &table]);
        nft(&["add", "table", "inet", &table])?;
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ])?;
        Ok(Firewall { table })
    }

    /// Drops packets from any address in `from` to any address in `to`.
    pub fn drop_from_to(&self, from: &[String], to: &[String]) -> anyhow::Result<()> {
        for a in from {
            for b in to {
                nft(&[
                    "add",
                    "rule",
                    "inet",
                    &self.table,
                    "out",
                    "ip",
                    "saddr",
                    a,
                    "ip",
                    "daddr",
                    b,
                    "drop",
                ])?;
            }
        }
        Ok(())
    }

    /// Cuts every link between the two sides, both ways.
    pub fn partition(&self, a: &[String], b: &[String]) -> anyhow::Result<()> {
        self.drop_from_to(a, b)?;
        self.drop_from_to(b, a)
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        nft(&["flush", "chain", "inet", &self.table, "out"])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table]);
    }
}
