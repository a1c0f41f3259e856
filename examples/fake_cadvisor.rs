//! Fake cAdvisor hosts for trying hatune by hand: one host per argument `ALIAS=CORES:USED`
//! (a host of CORES cores whose container ALIAS uses USED cores). Prints each host's URL and
//! serves until killed.
//!
//! `cargo run --example fake_cadvisor -- app-1=1:0.5 app-2=4:0.5`

use hatune::testkit::cadvisor::{FakeCadvisor, FakeContainer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut hosts = vec![];
    for arg in std::env::args().skip(1) {
        let parsed = arg.split_once('=').and_then(|(alias, rest)| {
            let (cores, used) = rest.split_once(':')?;
            Some((
                alias.to_string(),
                cores.parse::<u32>().ok()?,
                used.parse::<f64>().ok()?,
            ))
        });
        let Some((alias, cores, used)) = parsed else {
            return Err(format!("`{arg}`: write ALIAS=CORES:USED, e.g. app-1=2:0.5").into());
        };
        let host =
            FakeCadvisor::start(cores, vec![FakeContainer::new(alias.clone(), used)]).await?;
        println!("{alias} {}", host.url());
        hosts.push(host);
    }
    if hosts.is_empty() {
        return Err("usage: fake_cadvisor ALIAS=CORES:USED ...".into());
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
