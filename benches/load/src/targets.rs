//! The three systems under test, behind one set of operations.
//!
//! | op | inflight | etcd v3 | Redis |
//! | --- | --- | --- | --- |
//! | insert | `Insert` (fails if the key exists) | `Put` | `SET` |
//! | update | `Update` | `Put` | `SET` |
//! | get | `Get` at the chosen consistency | `Range` (linearizable or serializable) | `GET` |
//! | complete | `Complete` | `DeleteRange` (the record's life in the store ends) | `DEL` |

use std::time::Duration;

use anyhow::{bail, Context};
use inflight::client::{Client, ClientOptions, Consistency, ReadFrom};
use redis::aio::MultiplexedConnection;
use tonic::transport::{Channel, Endpoint};

pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

use etcdpb::kv_client::KvClient;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Inflight,
    Etcd,
    Redis,
}

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// inflight LINEARIZABLE, etcd linearizable Range, Redis GET.
    Linearizable,
    /// inflight LEASE.
    Lease,
    /// inflight STALE.
    Stale,
    /// etcd serializable Range.
    Serializable,
}

/// One connection's worth of client for one system.
#[derive(Clone)]
pub enum Conn {
    Inflight(Client),
    Etcd(KvClient<Channel>),
    Redis(MultiplexedConnection),
}

impl Conn {
    /// Opens connection number `i` to `endpoints` (spread over the endpoints).
    /// `spread_reads`: inflight's LINEARIZABLE reads go to the connection's
    /// first endpoint (any member), not to the leader.
    pub async fn open(
        system: System,
        endpoints: &[String],
        i: usize,
        spread_reads: bool,
    ) -> anyhow::Result<Conn> {
        let ep = &endpoints[i % endpoints.len()];
        Ok(match system {
            System::Inflight => {
                // Every connection knows every node (writes go to the leader,
                // STALE reads rotate over the nodes), starting at a different one.
                let mut eps = endpoints.to_vec();
                eps.rotate_left(i % endpoints.len());
                Conn::Inflight(Client::with_options(
                    eps,
                    ClientOptions {
                        request_timeout: Duration::from_secs(5),
                        retry_for: Duration::from_secs(10),
                        linearizable_reads: if spread_reads {
                            ReadFrom::Any
                        } else {
                            ReadFrom::Leader
                        },
                        ..Default::default()
                    },
                )?)
            }
            System::Etcd => {
                let channel = Endpoint::from_shared(format!("http://{ep}"))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .with_context(|| format!("connect to etcd at {ep}"))?;
                Conn::Etcd(KvClient::new(channel))
            }
            System::Redis => {
                let client = redis::Client::open(format!("redis://{ep}/"))?;
                Conn::Redis(
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .with_context(|| format!("connect to redis at {ep}"))?,
                )
            }
        })
    }

    pub async fn insert(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Inflight(c) => {
                c.insert(key, value.to_vec()).await?;
            }
            Conn::Etcd(_) | Conn::Redis(_) => self.put(key, value).await?,
        }
        Ok(())
    }

    pub async fn update(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Inflight(c) => {
                c.update(key, value.to_vec(), None).await?;
            }
            Conn::Etcd(_) | Conn::Redis(_) => self.put(key, value).await?,
        }
        Ok(())
    }

    async fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Etcd(kv) => {
                kv.put(etcdpb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.to_vec(),
                    lease: 0,
                })
                .await?;
            }
            Conn::Redis(r) => {
                let () = redis::cmd("SET").arg(key).arg(value).query_async(r).await?;
            }
            Conn::Inflight(_) => bail!("put is not an inflight operation"),
        }
        Ok(())
    }

    pub async fn get(&mut self, key: &str, mode: ReadMode) -> anyhow::Result<()> {
        match self {
            Conn::Inflight(c) => {
                let consistency = match mode {
                    ReadMode::Linearizable => Consistency::Linearizable,
                    ReadMode::Lease => Consistency::Lease,
                    ReadMode::Stale => Consistency::Stale,
                    ReadMode::Serializable => {
                        bail!("inflight reads are linearizable, lease or stale")
                    }
                };
                c.get(key, consistency).await?;
            }
            Conn::Etcd(kv) => {
                let serializable = match mode {
                    ReadMode::Linearizable => false,
                    ReadMode::Serializable => true,
                    _ => bail!("etcd reads are linearizable or serializable"),
                };
                let r = kv
                    .range(etcdpb::RangeRequest {
                        key: key.as_bytes().to_vec(),
                        serializable,
                        ..Default::default()
                    })
                    .await?;
                if r.get_ref().kvs.is_empty() {
                    bail!("etcd: {key} not found");
                }
            }
            Conn::Redis(r) => {
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(r).await?;
                if v.is_none() {
                    bail!("redis: {key} not found");
                }
            }
        }
        Ok(())
    }

    pub async fn complete(&mut self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Inflight(c) => {
                c.complete(key, Some(value.to_vec()), None).await?;
            }
            Conn::Etcd(kv) => {
                kv.delete_range(etcdpb::DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                })
                .await?;
            }
            Conn::Redis(r) => {
                let _: i64 = redis::cmd("DEL").arg(key).query_async(r).await?;
            }
        }
        Ok(())
    }
}
