//! `kizuna-local`: Kizuna without Spin. Serves every component of
//! `spin.toml` on loopback, with the same variables (`SPIN_VARIABLE_*`).
//!
//! Usage: kizuna-local [--listen 127.0.0.1:3000] [--data-dir .spin] [--threads 16]

fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut data_dir = std::path::PathBuf::from(".spin");
    let mut threads = 16usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--data-dir" => data_dir = value()?.into(),
            "--threads" => threads = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: kizuna-local [--listen 127.0.0.1:3000] [--data-dir .spin] [--threads 16]"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let host = kizuna_tests::Host::new(&data_dir)?;
    let server = kizuna_tests::Server::start(host, &listen, threads)?;
    eprintln!(
        "kizuna-local serving {} (data in {})",
        server.url(),
        data_dir.display()
    );
    server.join();
    Ok(())
}
