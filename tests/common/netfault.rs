//! Network faults between test nodes with nftables: each `Firewall` owns one
//! nftables table and drops packets between chosen node addresses. Needs root
//! and the `nft` binary (`.ci/run` installs nftables). Removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Firewall {
    table: String,
}

fn nft(args: &[&str]) {
    let out = Command::new("nft").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run nft ({e}); network-fault tests need nftables and root")
    });
    assert!(
        out.status.success(),
        "nft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Firewall {
    pub fn new() -> Firewall {
        static N: AtomicU32 = AtomicU32::new(0);
        let table = format!(
            "inflight_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        nft(&["add", "table", "inet", &table]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ]);
        Firewall { table }
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        for (s, d) in [(a, b), (b, a)] {
            nft(&[
                "add",
                "rule",
                "inet",
                &self.table,
                "out",
                "ip",
                "saddr",
                s,
                "ip",
                "daddr",
                d,
                "drop",
            ]);
        }
    }

    /// Cuts `node` off from every address in `others`.
    pub fn isolate(&self, node: &str, others: &[&str]) {
        for o in others {
            self.cut(node, o);
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        nft(&["flush", "chain", "inet", &self.table, "out"]);
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}
