//! Where a member is reached: its client port and its peer port.
//!
//! Every node listens on two gRPC ports. The client port serves `InFlight`
//! and `Cluster` to applications and operators; the peer port serves only
//! the `Raft` service to the other members (etcd's 2379 and 2380). Keeping
//! them apart lets an operator expose the client port to applications while
//! the peer port is reachable, and authenticated, only between nodes.
//!
//! openraft stores one string per member in the membership (its
//! `BasicNode::addr`), replicated in the log and in snapshots. We keep both
//! addresses in that string as `CLIENT/PEER` (`10.0.0.1:7001/10.0.0.1:7101`),
//! so the membership's encoding did not change when the ports split and
//! this build still reads an older log and snapshot. A string without `/`
//! was written by a build that served Raft on the client port; it reads as
//! the same address for both ports, but this build serves no Raft there, so
//! a peer at such an address is unreachable (the peer network logs that it
//! must be re-added). A cluster of such a build is therefore not upgraded
//! node by node in place: remove each old member and add it back as
//! `CLIENT/PEER` (`member remove`, then `--join`). New members must give
//! both addresses.

use std::fmt;

/// A member's two advertised addresses, each `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAddr {
    /// Applications and operators reach `InFlight` and `Cluster` here.
    pub client: String,
    /// Other members reach the `Raft` service here.
    pub peer: String,
}

impl MemberAddr {
    pub fn new(client: impl Into<String>, peer: impl Into<String>) -> MemberAddr {
        MemberAddr {
            client: client.into(),
            peer: peer.into(),
        }
    }

    /// Parses `CLIENT/PEER`, as given on the command line or in
    /// `member add-learner`: both addresses are required.
    pub fn parse(s: &str) -> Result<MemberAddr, String> {
        let Some((client, peer)) = s.trim().split_once('/') else {
            return Err(format!(
                "{s:?}: give the member's client and peer addresses as CLIENT_HOST:PORT/PEER_HOST:PORT"
            ));
        };
        let a = MemberAddr::new(client.trim(), peer.trim());
        for (what, addr) in [("client", &a.client), ("peer", &a.peer)] {
            check_host_port(addr).map_err(|e| format!("{s:?}: {what} address {e}"))?;
        }
        Ok(a)
    }

    /// Reads an address stored in the membership. Never fails: a stored
    /// address came through [`MemberAddr::parse`] (or is a pre-split
    /// `HOST:PORT`, used for both ports); if it is malformed anyway, dialing
    /// it fails with an error naming it.
    pub fn stored(s: &str) -> MemberAddr {
        // See the module docs: a pre-split address names one port for both.
        match s.split_once('/') {
            Some((client, peer)) => MemberAddr::new(client, peer),
            None => MemberAddr::new(s, s),
        }
    }
}

/// The form stored in the membership and printed: `CLIENT/PEER`.
impl fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.client, self.peer)
    }
}

fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT"));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{addr:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{addr:?} has no valid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_addresses_round_trip_through_the_stored_form() {
        let a = MemberAddr::parse("10.0.0.1:7001/10.0.0.1:7101").unwrap();
        assert_eq!(a, MemberAddr::new("10.0.0.1:7001", "10.0.0.1:7101"));
        assert_eq!(MemberAddr::stored(&a.to_string()), a);
        let v6 = MemberAddr::parse("[::1]:7001/[::1]:7101").unwrap();
        assert_eq!(v6.peer, "[::1]:7101");
    }

    #[test]
    fn a_pre_split_address_serves_both_ports() {
        assert_eq!(
            MemberAddr::stored("127.0.0.1:7001"),
            MemberAddr::new("127.0.0.1:7001", "127.0.0.1:7001")
        );
    }

    #[test]
    fn a_new_member_must_name_both_ports() {
        let e = MemberAddr::parse("127.0.0.1:7001").unwrap_err();
        assert!(e.contains("CLIENT_HOST:PORT/PEER_HOST:PORT"), "{e}");
        for bad in [
            "/127.0.0.1:7101",
            "127.0.0.1:7001/",
            "a:0/b:1",
            "a:1/b:x",
            "a b:1/c:2",
        ] {
            assert!(MemberAddr::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
