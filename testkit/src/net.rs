//! Network faults with nftables: every node (and, in the chaos suite, every
//! client) has its own loopback address, and a cut drops packets between
//! chosen addresses, one way or both ways. Each `Firewall` owns one nftables
//! table, removed on drop. Needs root and the `nft` binary (Debian:
//! `apt-get install nftables`).

use std::process::Command;

/// An `nft` command that failed, or could not be run.
#[derive(Debug)]
pub struct NftError(pub String);

impl std::fmt::Display for NftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NftError {}

fn nft(args: &[&str]) -> Result<(), NftError> {
    let out = Command::new("nft").args(args).output().map_err(|e| {
        NftError(format!(
            "cannot run nft ({e}); network faults need nftables and root"
        ))
    })?;
    if !out.status.success() {
        return Err(NftError(format!(
            "nft {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

pub struct Firewall {
    table: String,
}

impl Firewall {
    /// A fresh table `inflight_<name>` (a leftover one of that name is removed first).
    pub fn new(name: &str) -> Result<Firewall, NftError> {
        let table = format!("inflight_{name}");
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

    /// Drops packets from any address in `from` to any address in `to` (one way).
    pub fn cut_one_way<A: AsRef<str>, B: AsRef<str>>(
        &self,
        from: &[A],
        to: &[B],
    ) -> Result<(), NftError> {
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
                    a.as_ref(),
                    "ip",
                    "daddr",
                    b.as_ref(),
                    "drop",
                ])?;
            }
        }
        Ok(())
    }

    /// Cuts every link between the two sides, both ways.
    pub fn cut<A: AsRef<str>, B: AsRef<str>>(&self, a: &[A], b: &[B]) -> Result<(), NftError> {
        self.cut_one_way(a, b)?;
        self.cut_one_way(b, a)
    }

    /// Cuts `node` off from every address in `others`, both ways.
    pub fn isolate<B: AsRef<str>>(&self, node: &str, others: &[B]) -> Result<(), NftError> {
        self.cut(&[node], others)
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), NftError> {
        nft(&["flush", "chain", "inet", &self.table, "out"])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table]);
    }
}
