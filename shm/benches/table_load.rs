//! How long a fastpath takes to load a policy table of N invites
//! (`TABLE_BENCH_INVITES`, default 100000) as the private copy it enforces:
//! read the file (the copy), check its tag, validate the table. The read is
//! what a private copy costs over mapping a sealed memfd; the tag and the
//! validation are paid either way.
//!
//! `cargo bench -p totoro-shm --bench table_load`

use std::time::{Duration, Instant};

use proto::policy::{
    InviteId, InvitePolicy, NodePolicy, PolicySpec, PolicyTable, PortSet, ProxyTypes,
};
use shm::{InstanceDir, LoadedTable, TABLE_FILE};

fn main() {
    let n: usize = std::env::var("TABLE_BENCH_INVITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = base.join(format!("totoro-bench-table-{}", std::process::id()));
    let inst = InstanceDir::open(&path).expect("instance dir");
    let spec = PolicySpec {
        edge: Default::default(),
        mesh: Default::default(),
        generation: 1,
        created_ms: 1,
        node: NodePolicy {
            node_id: "node_bench".into(),
            region: "eu".into(),
            public: false,
            port_pool: PortSet::parse("10000-60000").expect("ports"),
            proxy_types: ProxyTypes::parse("tcp,udp,http,https").expect("types"),
            max_proxies_per_session: 0,
            sub_domain_host: String::new(),
        },
        keys: Vec::new(),
        invites: (0..n)
            .map(|i| InvitePolicy {
                id: InviteId::from_u128(i as u128 * 0x9e37_79b9_7f4a_7c15),
                revoked: false,
                expires_ms: 4_000_000_000_000,
                max_conns: 1,
                max_proxies: 5,
                proxy_types: ProxyTypes::parse("tcp").expect("types"),
                port_pool: PortSet::parse("10000-10009").expect("ports"),
                domain_suffix: String::new(),
                subdomain: String::new(),
            })
            .collect(),
        tenants: Vec::new(),
    };
    let mut file = spec.encode();
    inst.key.seal_table(&mut file);
    inst.dir
        .write_replacing(TABLE_FILE, &file)
        .expect("write table");

    let runs = 20;
    let (mut read, mut tag, mut parse, mut load) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let t = Instant::now();
        let bytes = inst.dir.read(TABLE_FILE).expect("read");
        read.push(t.elapsed());
        let t = Instant::now();
        let table = inst.key.open_table(&bytes).expect("tag");
        tag.push(t.elapsed());
        let t = Instant::now();
        PolicyTable::parse(table).expect("table");
        parse.push(t.elapsed());
        let t = Instant::now();
        let loaded = LoadedTable::load(&inst.dir, &inst.key).expect("load");
        load.push(t.elapsed());
        assert_eq!(loaded.get().invite_count(), n);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "table of {n} invites, {:.1} MiB; median of {runs} runs:",
        file.len() as f64 / 1048576.0
    );
    println!("  read (the private copy)  {:>8.3} ms", median(&mut read));
    println!("  tag (HMAC-SHA256)        {:>8.3} ms", median(&mut tag));
    println!("  validate (parse)         {:>8.3} ms", median(&mut parse));
    println!("  LoadedTable::load total  {:>8.3} ms", median(&mut load));
    let _ = std::fs::remove_dir_all(&path);
}
